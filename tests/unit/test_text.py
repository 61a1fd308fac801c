from pathlib import Path

import numpy as np
import pytest

from tce.models.encoders import minilm_dir
from tce.trainer.training import FULL_STEPS
from tce_backends.errors import BundleError
from tce_backends.text import TextFieldConfig, TextPreprocessor, clean_batch

CLEAN = ("dialogue_splitter", "html_normalizer", "emoji_remover", "text_normalizer")


@pytest.fixture(scope="module")
def text() -> TextPreprocessor:
    tokenizer = (minilm_dir() / "tokenizer.json").read_text(encoding="utf-8")
    return TextPreprocessor([TextFieldConfig("dialogue", FULL_STEPS, 16, 3),
                             TextFieldConfig("events", ("text_normalizer", "tokenizer"), 8, 1)], tokenizer)


def test_html_is_stripped_and_entities_unescaped():
    (out,) = clean_batch(["<p>Hello <b>there</b> &amp; welcome</p><script>alert(1)</script>"], CLEAN, 10_000)
    assert out == "Hello there & welcome"


def test_block_tags_become_turns_and_blank_turns_vanish():
    (out,) = clean_batch(["buyer: hi<br>seller: hello\r\n\n   \nbuyer: ok  "], CLEAN, 10_000)
    assert out == "buyer: hi\nseller: hello\nbuyer: ok"


def test_emoji_removed_text_kept():
    (out,) = clean_batch(["great 😀🙏 thanks 👍🏽 ✨"], CLEAN, 10_000)
    assert out == "great thanks"


def test_non_ascii_survives_and_is_nfkc_normalised():
    (out,) = clean_batch(["ünïcödé ｆｕｌｌｗｉｄｔｈ 日本語"], CLEAN, 10_000)
    assert out == "ünïcödé fullwidth 日本語"


def test_comparison_signs_are_not_tags():
    (out,) = clean_batch(["price a < b\nand c > d"], CLEAN, 10_000)
    assert out == "price a < b\nand c > d"


def test_batch_boundaries_hold_for_hostile_input():
    texts = ["a\ue000b", "&#57344;", "", "<b", "unclosed <script> x", "x\x00y"]
    out = clean_batch(texts, CLEAN, 10_000)
    assert len(out) == len(texts)
    assert out[2] == ""
    assert all("\ue000" not in t for t in out)


def test_each_text_is_cleaned_as_if_alone():
    texts = ["one <b>two</b>", "three\n\nfour", "😀", "five &amp; six"]
    together = clean_batch(texts, CLEAN, 10_000)
    alone = [clean_batch([t], CLEAN, 10_000)[0] for t in texts]
    assert together == alone


def test_chunks_shape_special_tokens_and_masks(text):
    tokens = text.encode("dialogue", ["hello world", "", "word " * 100])
    assert tokens.input_ids.shape == (3, 3, 16) and tokens.input_ids.dtype == np.int64
    # "hello world": one chunk [CLS] hello world [SEP]
    assert tokens.attention_mask[0, 0].sum() == 4 and tokens.attention_mask[0, 1:].sum() == 0
    assert tokens.input_ids[0, 0, 0] == text.cls_id and tokens.input_ids[0, 0, 3] == text.sep_id
    # empty text keeps [CLS][SEP] in chunk 0, so the model always sees one chunk
    assert tokens.input_ids[1, 0, :2].tolist() == [text.cls_id, text.sep_id]
    assert tokens.attention_mask[1].sum() == 2
    # very long text fills every chunk and is truncated, each chunk framed by CLS/SEP
    assert tokens.attention_mask[2].sum() == 3 * 16
    assert (tokens.input_ids[2, :, 0] == text.cls_id).all() and (tokens.input_ids[2, :, -1] == text.sep_id).all()
    assert (tokens.input_ids[tokens.attention_mask == 0] == text.pad_id).all()


def test_very_long_text_is_bounded_and_fast(text):
    huge = "buyer: <b>where is my parcel</b> 😀\n" * 50_000  # ~1.7 MB
    tokens = text.encode("dialogue", [huge, "short"])
    assert tokens.attention_mask[0].sum() == 3 * 16


def test_field_without_chunker_is_truncated_to_one_window(text):
    tokens = text.encode("events", ["order_placed shipped delivered claim_opened chargeback refund"])
    assert tokens.input_ids.shape == (1, 1, 8)
    assert tokens.input_ids[0, 0, -1] == text.sep_id


def test_batch_encoding_equals_single_encoding(text):
    texts = ["buyer: hi", "", "a much longer dialogue " * 10, "日本語"]
    batch = text.encode("dialogue", texts)
    for i, t in enumerate(texts):
        single = text.encode("dialogue", [t])
        assert (single.input_ids[0] == batch.input_ids[i]).all()
        assert (single.attention_mask[0] == batch.attention_mask[i]).all()


def test_save_and_load_round_trip(text, tmp_path: Path):
    text.save(tmp_path)
    loaded = TextPreprocessor.load(tmp_path)
    assert loaded.fields == text.fields
    assert (loaded.encode("dialogue", ["hi there"]).input_ids == text.encode("dialogue", ["hi there"]).input_ids).all()


@pytest.mark.parametrize("steps, message", [
    (("html_normalizer",), "must end with 'tokenizer'"),
    (("spellcheck", "tokenizer"), "unknown text steps"),
])
def test_bad_step_lists_are_rejected(steps, message):
    with pytest.raises(BundleError, match=message):
        TextFieldConfig("dialogue", steps)


def test_chunks_need_the_chunker():
    with pytest.raises(BundleError, match="dialogue_chunker"):
        TextFieldConfig("dialogue", ("tokenizer",), 16, 2)


def test_tokenizer_without_special_tokens_is_rejected():
    tokenizer = (minilm_dir() / "tokenizer.json").read_text(encoding="utf-8")
    with pytest.raises(BundleError, match="cls_token"):
        TextPreprocessor([TextFieldConfig("d", ("tokenizer",))], tokenizer, cls_token="<s>")
