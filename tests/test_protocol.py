"""The evaluation protocol module: task names and query subsets."""

from __future__ import annotations

import recipeset.pipeline
from recipeset import protocol
from recipeset.config import RunConfig
from recipeset.data.sets import EncodedSets
from recipeset.data.vocab import NUM_SPECIALS
from recipeset.protocol import eval_tasks


def test_eval_tasks_translates_the_config_names_in_order():
    cfg = RunConfig().override({"eval.tasks": ["likelihood", "set-completion", "completion", "order-sensitivity",
                                               "cuisine"]}, source="test")
    assert eval_tasks(cfg) == ["nll", "set", "completion", "order", "cuisine"]


def test_the_moved_functions_live_in_protocol_only():
    for name in ("evaluate_model", "eval_subset", "val_subset", "joint_subset", "oracle_metrics",
                 "oracle_references", "joint_subset_oracle_metrics", "EVAL_TASK_NAMES"):
        assert not hasattr(recipeset.pipeline, name), name


def test_subsets_are_seeded_nested_and_capped():
    sets = EncodedSets.from_lists([[NUM_SPECIALS + i % 12, NUM_SPECIALS + (i + 1) % 12] for i in range(100)])
    cfg = RunConfig().override({"eval.max_queries": 30, "eval.val_max_queries": 50, "eval.joint_max_queries": 7},
                               source="test")
    test = protocol.test_subset(sets, cfg)
    assert len(test) == 30 and test.to_lists() == protocol.eval_subset(sets, 30, cfg.eval.seed).to_lists()
    assert len(protocol.val_subset(sets, cfg)) == 30  # val_max_queries, then the max_queries cap
    assert len(protocol.joint_subset(sets, cfg)) == 7
    uncapped = RunConfig()
    assert protocol.test_subset(sets, uncapped) is sets
