"""The seed's text pipeline, run on a whole batch at once.

Cleaning steps work on one string holding the whole batch, joined by a private-use
separator, so each regex or normalisation is a single C-level pass rather than a
Python loop over rows. The HF fast tokenizer encodes the batch in one call and the
dialogue chunker cuts the padded token matrix into fixed ``[chunks, max_length]``
windows with numpy.

Steps (seed 001): ``dialogue_splitter``, ``html_normalizer``, ``emoji_remover``,
``text_normalizer``, ``dialogue_chunker``, ``tokenizer`` (always last).
"""
from __future__ import annotations

import html
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import BundleError

TEXT_FILE = "text.json"
TOKENIZER_FILE = "tokenizer.json"
CHARS_PER_TOKEN_BOUND = 32

# U+E000 (private use) never survives input sanitising, so it can join a batch.
_SEP = "\ue000"

_NEWLINES = re.compile(r"\r\n?|\u2028|\u2029")
_TURN_BREAKS = re.compile(r"[ \t\f\v]*\n[\s]*(?=[^\ue000])")
_BLOCK_TAGS = re.compile(r"<\s*(?:br|/p|/div|/li|/tr|hr)\b[^<>\ue000]*>", re.IGNORECASE)
_SCRIPT_STYLE = re.compile(r"<\s*(script|style)\b[^\ue000]*?<\s*/\s*\1\s*>", re.IGNORECASE)
_TAGS = re.compile(r"<(?:/?[A-Za-z][^<>\ue000]*|!--[^\ue000]*?--)>")
_EMOJI = re.compile(
    "["
    "\U0001F000-\U0001FAFF"  # pictographs, emoticons, transport, flags, symbols
    "\U00002600-\U000027BF"  # misc symbols, dingbats
    "\U00002B00-\U00002BFF"  # arrows, stars
    "\U0000FE00-\U0000FE0F"  # variation selectors
    "\U0000200D"             # zero-width joiner
    "\U000020E3"             # combining keycap
    "\U000E0020-\U000E007F"  # tag characters
    "]+"
)
_HSPACE = re.compile(r"[^\S\n\ue000]+")
_EDGE_SPACE = re.compile(r"\s*\ue000\s*")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SEP_ENTITY = re.compile(r"&#(?:[xX]0*[eE]000|0*57344);?")


def dialogue_splitter(joined: str) -> str:
    """One turn per line: unify line breaks, drop blank turns and turn padding."""
    joined = _NEWLINES.sub("\n", joined)
    return _TURN_BREAKS.sub("\n", joined)


def html_normalizer(joined: str) -> str:
    """Drop scripts/styles and tags (block tags become turn breaks), unescape entities."""
    joined = _SCRIPT_STYLE.sub(" ", joined)
    joined = _BLOCK_TAGS.sub("\n", joined)
    joined = _TAGS.sub(" ", joined)
    return html.unescape(_SEP_ENTITY.sub(" ", joined))


def emoji_remover(joined: str) -> str:
    return _EMOJI.sub(" ", joined)


def text_normalizer(joined: str) -> str:
    """NFKC, collapse horizontal whitespace, trim each text and each turn."""
    joined = unicodedata.normalize("NFKC", joined)
    joined = _HSPACE.sub(" ", joined)
    joined = re.sub(r" ?\n ?", "\n", joined)
    joined = re.sub(r"\n+", "\n", joined)
    return _EDGE_SPACE.sub(_SEP, joined).strip()


CLEANING_STEPS: dict[str, Callable[[str], str]] = {
    "dialogue_splitter": dialogue_splitter,
    "html_normalizer": html_normalizer,
    "emoji_remover": emoji_remover,
    "text_normalizer": text_normalizer,
}
STRUCTURAL_STEPS = ("dialogue_chunker", "tokenizer")
KNOWN_STEPS = (*CLEANING_STEPS, *STRUCTURAL_STEPS)


def clean_batch(texts: Sequence[str], steps: Sequence[str], max_chars: int) -> list[str]:
    """Apply the cleaning steps to every text with one pass per step."""
    if not texts:
        return []
    if max(map(len, texts)) > max_chars:  # bound regex work on pathological inputs
        texts = [t[:max_chars] for t in texts]
    joined = _SEP.join(texts)
    if joined.count(_SEP) != len(texts) - 1:  # a caller sent U+E000 itself
        joined = _SEP.join(t.replace(_SEP, " ") for t in texts)
    joined = _CONTROL.sub(" ", joined)
    for step in steps:
        clean = CLEANING_STEPS.get(step)
        if clean is not None:
            joined = clean(joined)
    cleaned = joined.split(_SEP)
    if len(cleaned) != len(texts):  # a step broke the separator contract: a bug, not bad input
        raise RuntimeError(f"text cleaning changed the batch size ({len(texts)} -> {len(cleaned)})")
    return cleaned


@dataclass(frozen=True)
class TextFieldConfig:
    """One text input: its cleaning steps and the token window the model sees."""

    name: str
    steps: tuple[str, ...]
    max_length: int = 64
    max_chunks: int = 1

    def __post_init__(self) -> None:
        part = f"text field {self.name!r}"
        unknown = [s for s in self.steps if s not in KNOWN_STEPS]
        if unknown:
            raise BundleError(part, f"unknown text steps {unknown}; known: {list(KNOWN_STEPS)}")
        if not self.steps or self.steps[-1] != "tokenizer":
            raise BundleError(part, "the step list must end with 'tokenizer'")
        if not 4 <= self.max_length <= 512:
            raise BundleError(part, f"max_length must be in [4, 512], got {self.max_length}")
        if self.max_chunks < 1:
            raise BundleError(part, f"max_chunks must be >= 1, got {self.max_chunks}")
        if self.max_chunks > 1 and "dialogue_chunker" not in self.steps:
            raise BundleError(part, "max_chunks > 1 needs the 'dialogue_chunker' step")

    @property
    def max_tokens(self) -> int:
        """Text tokens kept per record (each chunk also holds [CLS] and [SEP])."""
        return self.max_chunks * (self.max_length - 2)

    @property
    def max_chars(self) -> int:
        """Characters cleaned per text: far more than ``max_tokens`` tokens ever need,
        while bounding regex work on pathological inputs."""
        return self.max_tokens * CHARS_PER_TOKEN_BOUND

    @property
    def max_bytes(self) -> int:
        """Bytes of a caller's text that are decoded at all (4 per character at most),
        so capping here never changes what the model sees."""
        return self.max_chars * 4

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "steps": list(self.steps), "max_length": self.max_length,
                "max_chunks": self.max_chunks}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TextFieldConfig":
        try:
            return cls(name=data["name"], steps=tuple(data["steps"]), max_length=int(data["max_length"]),
                       max_chunks=int(data.get("max_chunks", 1)))
        except (KeyError, TypeError) as exc:
            raise BundleError("text", f"malformed text field entry: {exc!r}") from None


@dataclass(frozen=True)
class TokenizedText:
    input_ids: np.ndarray       # int64 [batch, chunks, max_length]
    attention_mask: np.ndarray  # int64 [batch, chunks, max_length]


class TextPreprocessor:
    """Cleans and tokenizes every text field of a bundle with its HF fast tokenizer."""

    def __init__(self, fields: Sequence[TextFieldConfig], tokenizer_json: str,
                 cls_token: str = "[CLS]", sep_token: str = "[SEP]", pad_token: str = "[PAD]") -> None:
        from tokenizers import Tokenizer  # the Rust fast tokenizer; no transformers import at serve time

        if not fields:
            raise BundleError("text", "a bundle needs at least one text field")
        names = [f.name for f in fields]
        if len(set(names)) != len(names):
            raise BundleError("text", f"duplicate text field names {names}")
        try:
            self._tokenizer = Tokenizer.from_str(tokenizer_json)
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise BundleError("tokenizer", f"cannot parse tokenizer.json: {exc}") from None
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        special = {}
        for role, token in (("cls_token", cls_token), ("sep_token", sep_token), ("pad_token", pad_token)):
            token_id = self._tokenizer.token_to_id(token)
            if token_id is None:
                raise BundleError("tokenizer", f"{role} {token!r} is not in the vocabulary")
            special[role] = token_id
        self.fields = tuple(fields)
        self.tokenizer_json = tokenizer_json
        self.special_tokens = {"cls_token": cls_token, "sep_token": sep_token, "pad_token": pad_token}
        self.cls_id, self.sep_id, self.pad_id = special["cls_token"], special["sep_token"], special["pad_token"]

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    def field(self, name: str) -> TextFieldConfig:
        for config in self.fields:
            if config.name == name:
                return config
        raise KeyError(name)

    def encode(self, field_name: str, texts: Sequence[str]) -> TokenizedText:
        config = self.field(field_name)
        cleaned = clean_batch(texts, config.steps, max_chars=config.max_chars)
        return self._tokenize(cleaned, config)

    def _tokenize(self, texts: Sequence[str], config: TextFieldConfig) -> TokenizedText:
        batch, chunks, length = len(texts), config.max_chunks, config.max_length
        window = length - 2
        stream = np.full((batch, config.max_tokens), self.pad_id, dtype=np.int64)
        if batch:
            encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
            for row, encoding in enumerate(encodings):  # ragged -> dense copy; the tokenizer itself ran in Rust
                ids = encoding.ids[: config.max_tokens]
                stream[row, : len(ids)] = ids
        # Cut the token stream into fixed windows: chunk c holds tokens [c*w, (c+1)*w).
        real = stream != self.pad_id
        windows = stream.reshape(batch, chunks, window)
        counts = real.reshape(batch, chunks, window).sum(axis=2)
        input_ids = np.full((batch, chunks, length), self.pad_id, dtype=np.int64)
        input_ids[:, :, 1:-1] = windows
        input_ids[:, :, 0] = self.cls_id
        np.put_along_axis(input_ids, (counts + 1)[:, :, None], self.sep_id, axis=2)
        attention_mask = (np.arange(length) < (counts + 2)[:, :, None]).astype(np.int64)
        # Chunks past the text are padding, except chunk 0, which an empty text keeps as [CLS][SEP].
        unused = (counts == 0) & (np.arange(chunks) > 0)
        input_ids[unused] = self.pad_id
        attention_mask[unused] = 0
        input_ids[attention_mask == 0] = self.pad_id
        return TokenizedText(input_ids, attention_mask)

    # -- persistence -----------------------------------------------------------
    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / TOKENIZER_FILE).write_text(self.tokenizer_json, encoding="utf-8")
        payload = {"fields": [f.to_dict() for f in self.fields], "special_tokens": self.special_tokens}
        (directory / TEXT_FILE).write_text(json.dumps(payload, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> "TextPreprocessor":
        for name in (TEXT_FILE, TOKENIZER_FILE):
            if not (directory / name).is_file():
                raise BundleError("text", f"missing {directory / name}")
        try:
            payload = json.loads((directory / TEXT_FILE).read_text(encoding="utf-8"))
            fields = [TextFieldConfig.from_dict(f) for f in payload["fields"]]
            special = payload.get("special_tokens", {})
        except (ValueError, KeyError, TypeError) as exc:
            raise BundleError("text", f"malformed {directory / TEXT_FILE}: {exc!r}") from None
        return cls(fields, (directory / TOKENIZER_FILE).read_text(encoding="utf-8"), **special)
