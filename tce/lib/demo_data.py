"""A synthetic buyer-seller messaging data set for the demo and the tests.

Each record has a dialogue (turns, HTML, emoji), an event log (trimodal only),
numeric features with missing values and categoricals with rare values. A hidden
``reason`` drives both the words in the dialogue and the tabular signals, and the
binary ``abuse`` label depends on the reason and on account age, so a model needs
text *and* tabular features to do well.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tce_backends.errors import UsageError

REASONS = ("none", "item_not_received", "payment_fraud", "harassment")
ABUSE_CLASSES = ("legit", "abusive")
NUMERIC = ("order_amount", "account_age_days", "prior_claims", "seller_rating", "message_count")
CATEGORICAL = ("payment_method", "marketplace", "item_category")

PAYMENT = ("card", "paypal", "wire", "gift_card", "crypto", "cod", "voucher")
PAYMENT_P = (0.48, 0.30, 0.07, 0.06, 0.04, 0.03, 0.02)
MARKETPLACE = ("US", "UK", "DE", "FR", "JP", "IN", "BR", "MX", "SG")
MARKETPLACE_P = (0.40, 0.15, 0.12, 0.10, 0.08, 0.07, 0.05, 0.02, 0.01)
CATEGORY = ("electronics", "fashion", "home", "toys", "luxury", "books")
CATEGORY_P = (0.30, 0.25, 0.20, 0.10, 0.07, 0.08)
# Never seen in training data: exercise the risk tables' default bins.
UNSEEN = {"payment_method": "barter", "marketplace": "ZZ", "item_category": "antiques"}

GREETINGS = ("hi", "hello", "hey there", "good morning", "dear seller", "hello again")
SMALL_TALK = (
    "is this still available?", "what is the shipping time to my city?", "can you combine shipping?",
    "thanks for the quick reply", "i will check and come back", "does it come with the original box?",
    "could you send more photos please", "ok sounds good", "great, thank you!", "have a nice day",
)
REASON_PHRASES = {
    "none": ("the item arrived and works fine", "just asking about the colour options",
             "happy with the order, will buy again", "can i change the delivery address?"),
    "item_not_received": ("my package never arrived", "tracking shows nothing for two weeks",
                          "i still have not received the order", "where is my parcel, it is very late",
                          "the courier says it was delivered but it was not"),
    "payment_fraud": ("please pay outside the platform by wire transfer", "send the gift card codes first",
                      "my card was charged twice by someone else", "use this other account to pay me directly",
                      "i can give a discount if you pay in crypto"),
    "harassment": ("you are an idiot and a scammer", "i will find where you live",
                   "stupid seller, worst person ever", "answer me now or else", "you people are disgusting"),
}
EVENTS = {
    "none": ("order_placed", "payment_captured", "shipped", "delivered"),
    "item_not_received": ("order_placed", "payment_captured", "shipped", "tracking_stalled", "claim_opened"),
    "payment_fraud": ("order_placed", "payment_failed", "payment_method_changed", "chargeback"),
    "harassment": ("order_placed", "message_flagged", "message_flagged", "block_requested"),
}
EMOJI = ("😀", "🙏", "😡", "📦", "💳", "👍", "🤬", "🚚")


@dataclass(frozen=True)
class DemoSpec:
    """Column names of the demo data set, in one place."""

    id_field: str = "record_id"
    dialogue: str = "dialogue"
    events: str = "events"
    abuse: str = "abuse"
    reason: str = "reason"


SPEC = DemoSpec()


def make_dataset(rows: int, seed: int = 0, unseen_rate: float = 0.0) -> pd.DataFrame:
    """Synthetic records with ``abuse`` (0/1) and ``reason`` (class index) labels."""
    rng = np.random.default_rng(seed)
    payment = rng.choice(PAYMENT, size=rows, p=PAYMENT_P)
    marketplace = rng.choice(MARKETPLACE, size=rows, p=MARKETPLACE_P)
    category = rng.choice(CATEGORY, size=rows, p=CATEGORY_P)
    account_age = rng.gamma(1.5, 300.0, size=rows)
    prior_claims = rng.poisson(0.6, size=rows).astype(np.float64)
    seller_rating = np.clip(rng.normal(4.2, 0.6, size=rows), 1.0, 5.0)
    order_amount = np.exp(rng.normal(3.8, 1.0, size=rows))

    risky_payment = np.isin(payment, ("wire", "gift_card", "crypto"))
    logits = np.stack([
        np.full(rows, 1.6),
        -0.4 + 0.7 * prior_claims - 0.9 * (seller_rating - 4.2),
        -0.9 + 2.2 * risky_payment - 0.002 * account_age + 0.4 * (category == "luxury"),
        -1.0 + 0.3 * (marketplace == "US"),
    ], axis=1)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    reason = (probs.cumsum(axis=1) > rng.random((rows, 1))).argmax(axis=1)

    abuse_logit = np.select([reason == 0, reason == 1, reason == 2, reason == 3], [-3.2, -1.2, 1.6, 1.2])
    abuse_logit = abuse_logit + 1.2 * (account_age < 60) + 0.5 * risky_payment
    abuse = (rng.random(rows) < 1.0 / (1.0 + np.exp(-abuse_logit))).astype(np.int64)

    dialogues = [_dialogue(rng, REASONS[r]) for r in reason]
    events = [" ".join(_events(rng, REASONS[r])) for r in reason]
    message_count = np.array([d.count("\n") + d.count("<br>") + 1 for d in dialogues], dtype=np.float64)

    frame = pd.DataFrame({
        SPEC.id_field: [f"r{seed}-{i:06d}" for i in range(rows)],
        SPEC.dialogue: dialogues,
        SPEC.events: events,
        "order_amount": np.round(order_amount, 2),
        "account_age_days": np.round(account_age),
        "prior_claims": prior_claims,
        "seller_rating": np.round(seller_rating, 1),
        "message_count": message_count,
        "payment_method": payment,
        "marketplace": marketplace,
        "item_category": category,
        SPEC.abuse: abuse,
        SPEC.reason: reason,
    })
    for column, rate in (("order_amount", 0.10), ("account_age_days", 0.15), ("seller_rating", 0.10)):
        frame.loc[rng.random(rows) < rate, column] = np.nan
    for column in CATEGORICAL:
        frame[column] = frame[column].astype(object)
        frame.loc[rng.random(rows) < 0.03, column] = None
        if unseen_rate:
            frame.loc[rng.random(rows) < unseen_rate, column] = UNSEEN[column]
    return frame


def _dialogue(rng: np.random.Generator, reason: str) -> str:
    turns = [f"buyer: {rng.choice(GREETINGS)}"]
    signal_phrases = list(rng.choice(REASON_PHRASES[reason], size=rng.integers(1, 3)))
    # Some records carry no textual signal at all: the label then comes from the tabular side.
    if rng.random() < 0.2:
        signal_phrases = []
    fillers = list(rng.choice(SMALL_TALK, size=rng.integers(1, 5)))
    body = signal_phrases + fillers
    rng.shuffle(body)
    for index, phrase in enumerate(body):
        speaker = "buyer" if index % 2 == 0 else "seller"
        if rng.random() < 0.25:
            phrase = f"<b>{phrase}</b>"
        if rng.random() < 0.25:
            phrase = f"{phrase} {rng.choice(EMOJI)}"
        if rng.random() < 0.1:
            phrase = phrase.replace(" and ", " &amp; ")
        turns.append(f"{speaker}: {phrase}")
    separator = "<br>" if rng.random() < 0.3 else "\n"
    return separator.join(turns)


def _events(rng: np.random.Generator, reason: str) -> list[str]:
    chain = list(EVENTS[reason])
    if rng.random() < 0.3:  # noisy logs: events from another story
        chain.append(str(rng.choice(EVENTS[REASONS[rng.integers(0, len(REASONS))]])))
    return chain


PREVIOUS_SCORE = "previous_abuse_score"


def demo_records(rows: int, seed: int = 1, labels: bool = False, kind: str = "bimodal") -> pd.DataFrame:
    """Records in the demo model's input schema, for the README's walkthrough.

    With ``labels``: ``label_abuse`` and ``label_reason`` as class names (the label
    columns ``tce evaluate`` and ``tce calibrate fit`` look for with two tasks) and
    ``previous_abuse_score``, a weaker model's abuse score to compare against.
    """
    if rows < 1:
        raise UsageError(f"--rows must be >= 1, got {rows}")
    frame = make_dataset(rows, seed=seed)
    abuse, reason = frame.pop(SPEC.abuse).to_numpy(), frame.pop(SPEC.reason).to_numpy()
    if kind == "bimodal":
        frame = frame.drop(columns=[SPEC.events])
    if labels:
        rng = np.random.default_rng(seed + 1_000_003)
        frame["label_abuse"] = np.array(ABUSE_CLASSES, dtype=object)[abuse]
        frame["label_reason"] = np.array(REASONS, dtype=object)[reason]
        logit = -1.6 + 1.0 * abuse + rng.normal(0.0, 1.2, size=rows)
        frame[PREVIOUS_SCORE] = np.round(1.0 / (1.0 + np.exp(-logit)), 6)
    return frame


def write_demo_records(path, rows: int, seed: int = 1, labels: bool = False, kind: str = "bimodal") -> pd.DataFrame:
    from tce.lib.tables import write_frame

    frame = demo_records(rows, seed, labels, kind)
    write_frame(frame, path)
    return frame
