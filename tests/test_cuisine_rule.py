"""The cuisine decision rule: per-class log-offsets tuned on validation macro-F1 (a prior correction)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import f1_score

from recipeset.data.sets import EncodedSets
from recipeset.data.vocab import NUM_SPECIALS, Vocabulary
from recipeset.evaluation import evaluate_cuisine, macro_f1
from recipeset.models import DeepSets, DeepSetsConfig
from recipeset.models.base import offset_probs
from recipeset.protocol import tune_cuisine_rule

VOCAB = Vocabulary(["a", "b", "c", "d"], ["x", "y", "z"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=40))
def test_macro_f1_equals_scikit_learn(pairs):
    labels, pred = (np.array(v) for v in zip(*pairs, strict=True))
    assert macro_f1(labels, pred, 4) == pytest.approx(f1_score(labels, pred, average="macro", zero_division=0))


def test_offset_probs_is_softmax_of_shifted_log_probs():
    p = torch.tensor([[0.6, 0.3, 0.1]])
    out = offset_probs(p, [0.0, np.log(2.0), 0.0])
    assert torch.allclose(out, torch.tensor([[0.6, 0.6, 0.1]]) / 1.3)
    assert offset_probs(p, ()) is p


class SkewedScorer:
    """Classifies by a fixed signal that over-predicts cuisine 0: the true class gets +1, class 0 gets +1.2."""

    can_classify = True

    def __init__(self, labels: np.ndarray) -> None:
        self.vocab, self.labels, self.cuisine_offsets = VOCAB, labels, ()

    def set_cuisine_offsets(self, offsets):
        self.cuisine_offsets = tuple(offsets)

    def classify_ids(self, tokens, mask):
        rows = tokens[:, 0] - NUM_SPECIALS  # the first id encodes the row (see _sets)
        logits = torch.zeros(len(rows), 3)
        logits[torch.arange(len(rows)), torch.as_tensor(self.labels[rows.numpy()])] += 1.0
        logits[:, 0] += 1.2
        return offset_probs(torch.softmax(logits, 1), self.cuisine_offsets)


def _sets(labels: np.ndarray) -> EncodedSets:
    ids = [[NUM_SPECIALS + i % 4] for i in range(len(labels))]
    return EncodedSets.from_lists(ids, cuisine=labels)


def test_tuned_offsets_fix_a_skewed_classifier_and_are_applied():
    labels = np.array([0, 1, 2, 1])
    scorer = SkewedScorer(labels)
    sets = _sets(labels)
    plain = evaluate_cuisine(scorer, sets)["macro_f1"]
    rule = tune_cuisine_rule(scorer, sets)
    assert rule.plain_macro_f1 == pytest.approx(plain) and plain <= 0.5
    assert rule.macro_f1 == 1.0 and rule.offsets[0] < min(rule.offsets[1:])
    assert scorer.cuisine_offsets == rule.offsets
    assert evaluate_cuisine(scorer, sets)["macro_f1"] == 1.0  # classify_ids now applies the rule


def test_the_plain_argmax_is_kept_when_no_offset_helps():
    labels = np.array([0, 0, 0, 0])  # everything is class 0, which the scorer already predicts
    scorer = SkewedScorer(labels)
    rule = tune_cuisine_rule(scorer, _sets(labels))
    assert rule.offsets == () and rule.macro_f1 == rule.plain_macro_f1 == 1.0


def test_a_model_without_a_cuisine_head_has_no_rule():
    model = DeepSets(DeepSetsConfig(d_model=8), VOCAB)
    assert tune_cuisine_rule(model, _sets(np.array([0, 1]))) is None


class FixedScorer(SkewedScorer):
    """Row ``i`` (its first id) gets the fixed logits ``logits[i]``."""

    def __init__(self, logits: list[list[float]]) -> None:
        super().__init__(np.zeros(len(logits), dtype=np.int64))
        self.logits = torch.tensor(logits)
        self.vocab = Vocabulary([f"i{k}" for k in range(len(logits))], ["x", "y", "z"])

    def classify_ids(self, tokens, mask):
        return offset_probs(torch.softmax(self.logits[tokens[:, 0] - NUM_SPECIALS], 1), self.cuisine_offsets)


def test_the_rule_keeps_the_accuracy_within_the_allowed_drop():
    # six cuisine-0 recipes (three of them ambiguous) and one cuisine-1 recipe, all argmax 0: accuracy 6/7,
    # macro-F1 0.4615. Moving cuisine 1 up by 0.75 catches its recipe and three ambiguous ones: macro-F1
    # (2/3 + 0.4) / 2 = 0.533, but accuracy 4/7 — a trade the default bound refuses.
    logits = [[0.5, 0.0, -9]] * 3 + [[3.0, 0.0, -9]] * 3 + [[0.5, 0.0, -9]]
    labels = np.array([0, 0, 0, 0, 0, 0, 1])
    sets = EncodedSets.from_lists([[NUM_SPECIALS + i] for i in range(7)], cuisine=labels)
    free = tune_cuisine_rule(FixedScorer(logits), sets, max_accuracy_drop=1.0)
    assert free.plain_accuracy == pytest.approx(6 / 7) and free.plain_macro_f1 == pytest.approx(12 / 26)
    assert free.macro_f1 == pytest.approx((2 / 3 + 0.4) / 2) and free.accuracy == pytest.approx(4 / 7)
    scorer = FixedScorer(logits)
    bounded = tune_cuisine_rule(scorer, sets, max_accuracy_drop=0.005)  # 0 by default
    assert bounded.offsets == () and scorer.cuisine_offsets == ()
    assert bounded.accuracy == bounded.plain_accuracy == pytest.approx(6 / 7)
    assert evaluate_cuisine(scorer, sets)["accuracy"] == pytest.approx(6 / 7)
    assert tune_cuisine_rule(FixedScorer(logits), sets).offsets == ()  # the default bound, 0, refuses it too
