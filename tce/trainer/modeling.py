"""The reference multimodal model: a BERT-family text encoder (HF BERT weights,
e.g. MiniLM-L6, or a tiny random config for tests), mean pooling over tokens and
then over dialogue chunks, a tabular MLP, a fusion layer and one softmax head per
task. Written in plain PyTorch so that ``torch.jit.script`` keeps every dynamic
shape (batch, chunks, sequence trimming) and the same ``model.pt`` serves on
Triton's libtorch backend and in a Python-backend host.

The exported ``forward`` takes ``(input_ids, attention_mask)`` per text field and
then the float32 tabular matrix, and returns one float32 row per record with every
task's class probabilities side by side (task order of the manifest).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tce.models.length_trim import real_length
from tce_backends.errors import UsageError


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")

    @classmethod
    def from_hf(cls, model_dir: Path) -> "BertConfig":
        data = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
        if data.get("model_type") != "bert":
            raise UsageError(f"{model_dir} holds a {data.get('model_type')!r} model, not BERT")
        return cls(**{k: data[k] for k in asdict(cls(vocab_size=1)) if k in data})

    @classmethod
    def tiny(cls, vocab_size: int) -> "BertConfig":
        """A 2-layer, 32-wide BERT for fast tests, with the real vocabulary."""
        return cls(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64, max_position_embeddings=512)


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=0)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.vocab_size = config.vocab_size

    def forward(self, input_ids: Tensor) -> Tensor:
        # An id outside the table is an error, not a lookup: on a GPU it would be a
        # device-side assert that breaks the model for every later request.
        if bool(((input_ids < 0) | (input_ids >= self.vocab_size)).any()):
            # TorchScript needs the literal: it is contract.TOKEN_RANGE_ERROR (a test keeps them equal).
            raise ValueError("input_ids: token ids must be in [0, vocab_size)")
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        embedded = (self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]
                    + self.token_type_embeddings.weight[0])
        return self.LayerNorm(embedded)


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_size = hidden // config.num_attention_heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.attention_output = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.intermediate = nn.Linear(hidden, config.intermediate_size)
        self.output = nn.Linear(config.intermediate_size, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)

    def _heads(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_size).transpose(1, 2)

    def forward(self, hidden: Tensor, attend: Tensor) -> Tensor:
        context = F.scaled_dot_product_attention(
            self._heads(self.query(hidden)), self._heads(self.key(hidden)), self._heads(self.value(hidden)),
            attn_mask=attend)
        context = context.transpose(1, 2).reshape(hidden.shape)
        hidden = self.attention_norm(hidden + self.attention_output(context))
        return self.output_norm(hidden + self.output(F.gelu(self.intermediate(hidden))))


class BertEncoder(nn.Module):
    """BERT without the pooler: token ids and mask -> last hidden states."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])
        self.hidden_size = config.hidden_size

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        attend = (attention_mask > 0)[:, None, None, :]
        hidden = self.embeddings(input_ids)
        for layer in self.layers:
            hidden = layer(hidden, attend)
        return hidden

    # HF BertModel key -> our key.
    _HF_RENAMES = (
        ("encoder.layer.", "layers."),
        (".attention.self.query.", ".query."),
        (".attention.self.key.", ".key."),
        (".attention.self.value.", ".value."),
        (".attention.output.dense.", ".attention_output."),
        (".attention.output.LayerNorm.", ".attention_norm."),
        (".intermediate.dense.", ".intermediate."),
        (".output.dense.", ".output."),
        (".output.LayerNorm.", ".output_norm."),
    )

    @classmethod
    def from_hf(cls, model_dir: Path) -> "BertEncoder":
        """Load HF BERT weights (``model.safetensors``) into this encoder, strictly."""
        from safetensors.torch import load_file

        encoder = cls(BertConfig.from_hf(model_dir))
        state = {}
        for key, value in load_file(str(Path(model_dir) / "model.safetensors")).items():
            key = key.removeprefix("bert.")
            if key.startswith("pooler.") or key.endswith("position_ids"):
                continue
            for old, new in cls._HF_RENAMES:
                key = key.replace(old, new)
            state[key] = value
        encoder.load_state_dict(state, strict=True)
        return encoder


class ChunkedTextEncoder(nn.Module):
    """[batch, chunks, length] tokens -> [batch, hidden]: mean over tokens, then
    mean over the chunks that hold text.

    With ``trim`` (the served path) padding costs no compute: the chunks that hold
    text are packed, the batch is cut after its last real position, and the pooled
    rows are scattered back. Without it every position of every chunk is encoded
    (the naive fixed-padding forward the benchmark compares against); the outputs
    agree within float rounding."""

    def __init__(self, encoder: BertEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.hidden_size = encoder.hidden_size

    def forward(self, input_ids: Tensor, attention_mask: Tensor, trim: bool = True) -> Tensor:
        batch, chunks, length = input_ids.shape
        flat_ids = input_ids.reshape(batch * chunks, length)
        flat_mask = attention_mask.reshape(batch * chunks, length)
        present = (flat_mask > 0).any(dim=1)
        if trim:
            rows = present.nonzero().squeeze(1)
            longest = real_length(flat_mask)
            mask = flat_mask[rows, :longest]
            attend = mask
        else:
            rows = torch.arange(batch * chunks, device=input_ids.device)
            longest = length
            mask = flat_mask
            # An empty chunk attends to its first position, so attention has a key (no NaN); its weight stays 0.
            attend = mask.clone()
            attend[:, 0] = torch.where(present, attend[:, 0], torch.ones_like(attend[:, 0]))
        hidden = self.encoder(flat_ids[rows, :longest], attend)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        per_chunk = torch.zeros(batch * chunks, self.hidden_size, dtype=hidden.dtype, device=hidden.device)
        per_chunk = per_chunk.index_copy(0, rows, pooled).view(batch, chunks, self.hidden_size)
        chunk_weights = present.view(batch, chunks, 1).to(hidden.dtype)
        return (per_chunk * chunk_weights).sum(dim=1) / chunk_weights.sum(dim=1).clamp(min=1.0)


class MultimodalClassifier(nn.Module):
    """Shared text encoder, per-field projection, tabular MLP, fusion, task heads."""

    def __init__(self, encoder: BertEncoder, num_text_fields: int, num_tabular: int, task_sizes: List[int],
                 tabular_mean: Tensor, tabular_std: Tensor, hidden: int = 128, tabular_hidden: int = 32,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.text = ChunkedTextEncoder(encoder)
        self.text_projections = nn.ModuleList(
            [nn.Linear(encoder.hidden_size, hidden) for _ in range(num_text_fields)])
        self.register_buffer("tabular_mean", tabular_mean.to(torch.float32).reshape(num_tabular))
        self.register_buffer("tabular_std", tabular_std.to(torch.float32).clamp(min=1e-6).reshape(num_tabular))
        self.tabular_mlp = nn.Sequential(nn.Linear(num_tabular, tabular_hidden), nn.ReLU())
        self.fusion = nn.Sequential(nn.Linear(hidden * num_text_fields + tabular_hidden, hidden), nn.ReLU(),
                                    nn.Dropout(dropout))
        self.heads = nn.ModuleList([nn.Linear(hidden, size) for size in task_sizes])

    def head_logits(self, text_embeddings: List[Tensor], tabular: Tensor) -> List[Tensor]:
        parts: List[Tensor] = []
        for index, projection in enumerate(self.text_projections):
            parts.append(torch.relu(projection(text_embeddings[index])))
        # Clamp standardised features: values far outside training (a 100x order amount) must not extrapolate.
        standardised = ((tabular - self.tabular_mean) / self.tabular_std).clamp(-5.0, 5.0)
        parts.append(self.tabular_mlp(standardised))
        fused = self.fusion(torch.cat(parts, dim=1))
        return [head(fused) for head in self.heads]

    def probabilities(self, text_embeddings: List[Tensor], tabular: Tensor) -> Tensor:
        return torch.cat([torch.softmax(logits, dim=1) for logits in self.head_logits(text_embeddings, tabular)],
                         dim=1)


class BimodalModel(nn.Module):
    """The exported forward for one text field. ``trim_padding`` is the switch the
    benchmark flips to time the naive fixed-padding forward of the same weights."""

    def __init__(self, core: MultimodalClassifier) -> None:
        super().__init__()
        self.core = core
        self.trim_padding = True

    def forward(self, input_ids: Tensor, attention_mask: Tensor, tabular: Tensor) -> Tensor:
        return self.core.probabilities([self.core.text(input_ids, attention_mask, self.trim_padding)], tabular)


class TrimodalModel(nn.Module):
    def __init__(self, core: MultimodalClassifier) -> None:
        super().__init__()
        self.core = core
        self.trim_padding = True

    def forward(self, primary_input_ids: Tensor, primary_attention_mask: Tensor, secondary_input_ids: Tensor,
                secondary_attention_mask: Tensor, tabular: Tensor) -> Tensor:
        return self.core.probabilities(
            [self.core.text(primary_input_ids, primary_attention_mask, self.trim_padding),
             self.core.text(secondary_input_ids, secondary_attention_mask, self.trim_padding)], tabular)


def wrap_for_export(core: MultimodalClassifier) -> nn.Module:
    wrappers = {1: BimodalModel, 2: TrimodalModel}
    return wrappers[len(core.text_projections)](core).eval()


def export_torchscript(core: MultimodalClassifier, path: Path) -> torch.jit.ScriptModule:
    """Script (not trace) so every dynamic shape survives, then save ``model.pt``."""
    scripted = torch.jit.script(wrap_for_export(core))
    scripted.save(str(path))
    return scripted
