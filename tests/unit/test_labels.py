"""tce.lib.labels: true labels as class indices, and errors that say what a label may be."""
from __future__ import annotations

import pandas as pd
import pytest

from tce.lib.labels import true_labels
from tce_backends.errors import UsageError
from tce_backends.tasks import TaskSpec

REASON = TaskSpec("reason", "multiclass", ("none", "item_not_received", "payment_fraud", "harassment"))


def test_names_and_indices_become_class_indices():
    frame = pd.DataFrame({"by_name": ["none", "harassment"], "by_index": [0, 3], "as_text": ["0", "harassment"]})
    for column in ("by_name", "by_index", "as_text"):
        assert true_labels(frame, REASON, column).tolist() == [0, 3]


@pytest.mark.parametrize("values", [["none", "fraud"], [0, 7], [0.5, 1.0]])
def test_a_label_that_is_no_class_names_the_valid_ones(values):
    with pytest.raises(UsageError, match=r"the classes are 'none', 'item_not_received', 'payment_fraud', "
                                         r"'harassment' \(or their indices 0..3\)"):
        true_labels(pd.DataFrame({"label_reason": values}), REASON, "label_reason")
