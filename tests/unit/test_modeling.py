"""The reference model: real BERT weights, TorchScript == eager, batch invariance."""
import numpy as np
import pytest
import torch

from tce.models.encoders import minilm_dir
from tce.repository.builder import schema_for
from tce.trainer.modeling import BertEncoder, wrap_for_export
from tce_backends.bundle import Bundle
from tce_backends.model_runner import ModelRunner
from tce_backends.reference import ReferencePipeline
from tce_client.schema import EnsembleSchema


def test_bert_encoder_matches_hf_bert_on_minilm():
    from transformers import AutoModel

    ours = BertEncoder.from_hf(minilm_dir()).eval()
    theirs = AutoModel.from_pretrained(str(minilm_dir())).eval()
    ids = torch.randint(1000, 20000, (3, 24))
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    with torch.inference_mode():
        a = ours(ids, mask)
        b = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (a - b)[mask.bool()].abs().max().item() <= 1e-5


@pytest.mark.parametrize("bundle_name", ["bimodal_bundle", "trimodal_bundle"])
def test_torchscript_and_eager_agree_through_the_reference_pipeline(bundle_name, request, varied_records):
    bundle: Bundle = request.getfixturevalue(bundle_name)
    scripted = ModelRunner(bundle.model_path, device="cpu")
    # Rebuild an eager module with the scripted weights: same architecture, plain Python execution.
    eager_core = _eager_copy(bundle, scripted)
    eager = wrap_for_export(eager_core)

    def run_eager(arrays):
        with torch.inference_mode():
            return eager(*[torch.from_numpy(a) for a in arrays]).numpy()

    inputs = schema_for(bundle.manifest).encode(varied_records)
    a = ReferencePipeline(bundle, model=scripted).predict(inputs)
    b = ReferencePipeline(bundle, model=run_eager).predict(inputs)
    for task in bundle.manifest.tasks:
        assert np.abs(a[f"{task.name}_raw"] - b[f"{task.name}_raw"]).max() <= 1e-5
        assert np.abs(a[f"{task.name}_calibrated"] - b[f"{task.name}_calibrated"]).max() <= 1e-5


def _eager_copy(bundle: Bundle, scripted: ModelRunner):
    from tce.trainer.modeling import BertConfig, MultimodalClassifier

    state = scripted.module.state_dict()
    core_state = {k.removeprefix("core."): v for k, v in state.items()}
    vocab, hidden = core_state["text.encoder.embeddings.word_embeddings.weight"].shape
    layers = len({k.split(".")[3] for k in core_state if k.startswith("text.encoder.layers.")})
    intermediate = core_state["text.encoder.layers.0.intermediate.weight"].shape[0]
    heads = 2 if hidden == 32 else 12
    encoder = BertEncoder(BertConfig(vocab, hidden, layers, heads, intermediate))
    tasks = bundle.manifest.tasks
    core = MultimodalClassifier(encoder, len(bundle.manifest.text_fields), len(bundle.manifest.features.names),
                                [t.num_classes for t in tasks], core_state["tabular_mean"], core_state["tabular_std"])
    core.load_state_dict(core_state)
    return core.eval()


def test_a_record_scores_the_same_alone_and_in_a_batch(bimodal_bundle, varied_records):
    pipeline = ReferencePipeline(bimodal_bundle)
    schema = schema_for(bimodal_bundle.manifest)
    together = pipeline.predict(schema.encode(varied_records[:40]))
    for i in (0, 7, 39):
        alone = pipeline.predict(schema.encode(varied_records[i:i + 1]))
        assert np.abs(alone["abuse_raw"][0] - together["abuse_raw"][i]).max() <= 1e-5


def test_all_padding_warmup_batch_runs(bimodal_bundle):
    runner = ModelRunner(bimodal_bundle.model_path, device="cpu")
    out = runner([np.zeros((1, 2, 64), np.int64), np.zeros((1, 2, 64), np.int64), np.zeros((1, 8), np.float32)])
    assert out.shape == (1, 6) and np.isfinite(out).all()


@pytest.mark.parametrize("token_id", [-1, 10 ** 9])
def test_token_ids_outside_the_vocabulary_are_an_input_error(bimodal_bundle, token_id):
    """Not an index error (a device-side assert on a GPU, which breaks the model for everyone)."""
    from tce_backends.contract import TOKEN_RANGE_ERROR
    from tce_backends.errors import InputError

    runner = ModelRunner(bimodal_bundle.model_path, device="cpu")
    ids = np.full((1, 2, 64), token_id, np.int64)
    with pytest.raises(InputError, match=r"input 'input_ids'.*" + TOKEN_RANGE_ERROR.replace("[", r"\[")
                       .replace(")", r"\)")):
        runner([ids, np.ones((1, 2, 64), np.int64), np.zeros((1, 8), np.float32)])


def test_schema_round_trips_through_json(bimodal_bundle):
    schema = schema_for(bimodal_bundle.manifest)
    assert EnsembleSchema.from_json(schema.to_json()) == schema
