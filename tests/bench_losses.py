"""Benchmark (not collected by default: run ``pytest -s tests/bench_losses.py``).

Training-step time of the Hungarian loss against the standard loss on the same slot model and batch, measured
side by side (interleaved A/B) in one run. The target from issue #4: ≤ 1.15× on CPU.
"""

import json

import torch

from recipeset.bench import bench_hungarian_vs_standard

MAX_RATIO = 1.15


def test_hungarian_step_within_target_of_standard_step():
    torch.set_num_threads(1)
    report = bench_hungarian_vs_standard(batch_size=64, n_slots=32, vocab_size=400, d_model=128, steps=20)
    print(json.dumps(report, indent=1))
    assert report["hungarian_over_standard_ratio"] <= MAX_RATIO, report
    # the matcher is a small share of the Hungarian step
    assert report["matching_ms"] < 0.1 * report["hungarian_step_ms"], report
