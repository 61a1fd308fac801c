"""A realistic request mix: short and long dialogues, missing numerics, unseen categories."""
from __future__ import annotations

import numpy as np

from tce.lib.demo_data import make_dataset


def record_pool(size: int = 2000, seed: int = 11) -> list[dict]:
    frame = make_dataset(size, seed=seed, unseen_rate=0.05).drop(columns=["abuse", "reason", "record_id"])
    rng = np.random.default_rng(seed)
    dialogues = frame["dialogue"].tolist()
    long_rows = rng.random(size) < 0.15  # long conversations: several dialogues in a row
    frame.loc[long_rows, "dialogue"] = ["\n".join(rng.choice(dialogues, 6)) for _ in range(int(long_rows.sum()))]
    for column in ("order_amount", "seller_rating", "prior_claims"):
        frame[column] = frame[column].astype(object)
        frame.loc[rng.random(size) < 0.1, column] = None
    return frame.to_dict(orient="records")
