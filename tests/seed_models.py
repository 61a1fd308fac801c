"""Seed-style models for the Lightning import tests: a dict batch in, logits out, as the
seed's BSM models are; constructed from ``model_artifacts.pth``'s config."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class DialogueClassifier(nn.Module):
    def __init__(self, config: dict) -> None:
        super().__init__()
        self.text_name = config["text_name"]
        self.features = list(config["tab_field_list"]) + list(config["cat_field_list"])
        self.embedding = nn.Embedding(int(config["vocab_size"]), 8)
        self.head = nn.Linear(8 + len(self.features), int(config["num_logits"]))

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        mask = batch[f"{self.text_name}_attention_mask"].float()
        pooled = (self.embedding(batch[f"{self.text_name}_input_ids"]) * mask.unsqueeze(-1)).sum(dim=(1, 2))
        pooled = pooled / mask.sum(dim=(1, 2)).clamp(min=1.0).unsqueeze(-1)
        tabular = torch.stack([batch[name] for name in self.features], dim=1)
        return self.head(torch.cat([pooled, torch.nan_to_num(tabular)], dim=1))


class LightningDialogueClassifier(nn.Module):
    """What a LightningModule holding the network as ``self.model`` saves: keys ``model.*``."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.model = DialogueClassifier(config)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.model(batch)
