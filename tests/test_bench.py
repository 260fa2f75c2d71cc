"""The performance report of ``recipeset bench``: its pieces measure what they say (no timing targets here —
speed targets live in the benchmark itself, on a quiet machine)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from recipeset.bench import bench_variant, dense_matmul_flops, study_variants
from recipeset.cli import cli
from recipeset.config import RunConfig
from recipeset.data.prepare import prepare_data
from recipeset.progress import is_progress_line
from recipeset.registry import LOSSES, MODELS


def test_the_variants_are_every_model_with_every_set_loss_it_runs():
    variants = study_variants()
    assert {"decoder-clm", "decoder-clm-unpacked", "decoder-set-ar", "decoder-min-perm", "decoder-pooled",
            "set-transformer-mlm", "set-transformer-mlm-unpacked", "set-transformer-hungarian",
            "set-transformer-pooled", "deep-sets-mlm", "deep-sets-multilabel"} == set(variants)
    for packed in ("decoder-clm", "set-transformer-mlm"):  # the default objectives that pack, also unpacked
        assert variants[f"{packed}-unpacked"] == {**variants[packed], "train.pack": False}
    for over in variants.values():  # every one is a valid run config
        RunConfig().override(over)
    assert {o["model.name"] for o in variants.values()} == set(MODELS.names())
    assert {o.get("loss.name") for o in variants.values()} - {None} == set(LOSSES.names()) - {"standard"}


def test_bench_variant_counts_real_positions_and_flops():
    cfg = RunConfig().override({"data.n_recipes": 300, "model.d_model": 16, "model.n_layers": 1,
                                "train.batch_size": 16, "train.device": "cpu"})
    data = prepare_data(cfg.data)
    r = bench_variant(cfg, data, steps=2, warmup=1, eval_queries=16, joint_queries=2)
    assert 0 < r["real_position_fraction"] <= 1 and 0 <= r["data_share"] < 1
    assert r["flops_per_step"] > 0 and r["recipes_per_s"] > 0
    assert r["eval_next_queries_per_s"] > 0 and r["eval_joint_queries_per_s"] > 0  # the decoder scores both
    # a linear model's forward + backward is at least 3 × 2·B·D·V multiply-adds for its output layer alone
    assert r["flops_per_step"] >= 6 * 16 * 16 * len(data.vocab)
    assert dense_matmul_flops(n=64, repeats=3) > 0


@pytest.mark.parametrize("model", ["decoder", "set-transformer"])
def test_bench_reports_the_packed_default_beside_the_unpacked_one(model):
    cfg = RunConfig().override({"model.name": model, "data.n_recipes": 300, "model.d_model": 16,
                                "model.n_layers": 1, "train.batch_size": 16, "train.device": "cpu"})
    data = prepare_data(cfg.data)
    packed = bench_variant(cfg, data, steps=2, warmup=1, eval_queries=8, joint_queries=1)
    plain = bench_variant(cfg.override({"train.pack": False}), data, steps=2, warmup=1, eval_queries=8,
                          joint_queries=1)
    assert packed["packed"] and not plain["packed"] and packed["step_ms"] > 0 and plain["step_ms"] > 0
    assert plain["real_position_fraction"] < packed["real_position_fraction"] <= 1  # fewer positions, same recipes
    assert packed["flops_per_step"] <= plain["flops_per_step"]


def test_bench_cli_json_and_bad_variant():
    result = CliRunner().invoke(cli, ["bench", "--dataset", "synthetic", "--steps", "2", "--d-model", "16",
                                      "--batch-size", "16", "--variant", "deep-sets-mlm", "--json"])
    assert result.exit_code == 0, result.output
    assert not any(is_progress_line(line) for line in result.output.splitlines())  # --json: no progress
    report = json.loads(result.stdout)
    assert set(report["variants"]) == {"deep-sets-mlm"} and report["dense_matmul_flops_per_s"] > 0
    assert report["hungarian_vs_standard"]["hungarian_over_standard_ratio"] > 0 and report["peak_rss_mb"] > 0
    bad = CliRunner().invoke(cli, ["bench", "--dataset", "synthetic", "--variant", "decoder-hungarian"])
    assert bad.exit_code != 0 and "unknown variant" in bad.output and "Traceback" not in bad.output
    assert torch.get_num_threads() >= 1


def test_bench_reports_which_variant_it_measures():
    result = CliRunner().invoke(cli, ["bench", "--dataset", "synthetic", "--steps", "2", "--d-model", "16",
                                      "--batch-size", "16", "--variant", "deep-sets-mlm"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if is_progress_line(line)]
    assert any(line.endswith("] bench 1/1 deep-sets-mlm") for line in lines), result.output
    assert "hungarian/standard step" in result.stdout
