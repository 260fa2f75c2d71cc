"""Length-grouped batching (recipeset/data/batching.py, the Trainer's epoch plan and validation batches), the
``train.bucket_pool`` and ``train.threads`` fields, and the threads / OpenMP wait policy of runs and grids."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recipeset.config import BUCKET_POOL, RunConfig, bucket_pool_for, position_averaged
from recipeset.data.batching import bucket_batches, chunks, real_fraction, sorted_batches
from recipeset.data.packing import packed_real_fraction
from recipeset.errors import RecipesetError
from recipeset.threads import default_threads, resolve_threads, set_passive_wait_policy
from recipeset.training import epoch_batches, grouped_batches

# flavornet's training split: number of recipes of each set size 0..32 (mean 8.2)
FLAVORNET_SIZES = [0, 286, 936, 1844, 2959, 4300, 5126, 5435, 5372, 4528, 3770, 2855, 2198, 1753, 1297, 895, 616,
                   414, 214, 173, 96, 51, 24, 25, 17, 5, 4, 0, 1, 2, 1, 0, 1]


def flavornet_like_lengths(n: int, seed: int = 0) -> np.ndarray:
    p = np.array(FLAVORNET_SIZES, dtype=float)
    return np.random.default_rng(seed).choice(len(p), size=n, p=p / p.sum()).astype(np.int64)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 700), batch_size=st.integers(1, 40), pool=st.integers(0, 12), seed=st.integers(0, 2**32),
       epoch=st.integers(0, 5), max_len=st.integers(1, 30))
def test_every_row_once_full_batches_then_one_partial_and_deterministic(n, batch_size, pool, seed, epoch, max_len):
    lengths = np.random.default_rng(seed).integers(1, max_len + 1, size=n)
    batches = epoch_batches(n, batch_size, seed, epoch, lengths, pool)
    rows = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    assert np.array_equal(np.sort(rows), np.arange(n))  # every row exactly once per epoch
    assert len(batches) == -(-n // batch_size)
    assert all(len(b) == batch_size for b in batches[:-1]) and (not batches or 1 <= len(batches[-1]) <= batch_size)
    again = epoch_batches(n, batch_size, seed, epoch, lengths, pool)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))  # a function of (seed, epoch)
    if pool == 0:  # off: the plain permutation, as before the field existed
        assert all(np.array_equal(a, b) for a, b in zip(batches, epoch_batches(n, batch_size, seed, epoch),
                                                         strict=True))


@settings(max_examples=40, deadline=None)
@given(draws=st.lists(st.integers(0, 49), max_size=300), batch_size=st.integers(1, 20), pool=st.integers(1, 8))
def test_draws_with_replacement_keep_their_multiset(draws, batch_size, pool):
    lengths = np.arange(50) % 7 + 1
    order = np.array(draws, dtype=np.int64)
    batches = grouped_batches(order, batch_size, 3, 1, lengths, pool)
    rows = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    assert np.array_equal(np.sort(rows), np.sort(order))
    assert len(batches) == -(-len(order) // batch_size)


def test_pools_are_sorted_by_size_and_the_batches_shuffled():
    lengths = flavornet_like_lengths(64 * 40)
    order = np.random.default_rng(0).permutation(len(lengths))
    batches = bucket_batches(order, lengths, 64, 10, seed=1)
    for start in range(0, len(order), 640):  # each pool's rows are its slice of the order, cut by size
        pool = set(order[start:start + 640].tolist())
        members = [b for b in batches if set(b.tolist()) <= pool]
        assert sum(len(b) for b in members) == 640
        spans = sorted((lengths[b].min(), lengths[b].max()) for b in members)
        assert all(hi <= lo2 for (_, hi), (lo2, _) in zip(spans, spans[1:], strict=False))
    first_sizes = [int(lengths[b].max()) for b in batches]
    assert first_sizes != sorted(first_sizes)  # not one long ramp from short to long
    assert not all(np.array_equal(a, b) for a, b in zip(batches, bucket_batches(order, lengths, 64, 10, seed=2),
                                                         strict=True))


def test_real_positions_on_flavornet_like_sizes():
    lengths = flavornet_like_lengths(8000)
    plain = epoch_batches(len(lengths), 64, 0, 0)
    grouped = epoch_batches(len(lengths), 64, 0, 0, lengths, BUCKET_POOL)
    assert real_fraction(plain, lengths) < 0.5
    assert real_fraction(grouped, lengths) >= 0.85


def test_packed_batches_on_flavornet_like_sizes_are_mostly_real():
    lengths = flavornet_like_lengths(8000)
    plain = epoch_batches(len(lengths), 64, 0, 0)  # packing keeps the plain plan's batches
    fed = lengths + 1  # what a decoder runs on: [BOS] + the ingredients
    assert real_fraction(plain, fed) < 0.5
    assert packed_real_fraction(plain, fed) >= 0.85  # measured: 0.95
    assert packed_real_fraction(epoch_batches(len(lengths), 256, 0, 0), fed) >= 0.95  # bigger batches pack better


def test_sorted_batches_for_evaluation():
    lengths = np.array([5, 1, 3, 1, 9, 2, 3])
    batches = sorted_batches(lengths, 3)
    assert [b.tolist() for b in batches] == [[1, 3, 5], [2, 6, 0], [4]]  # stable: ties in row order
    assert [b.tolist() for b in sorted_batches(lengths, 3, by_length=False)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [b.tolist() for b in chunks(np.arange(5), 2)] == [[0, 1], [2, 3], [4]]


# ---- config ------------------------------------------------------------------------------------------------
def test_bucket_pool_and_threads_fields(monkeypatch):
    assert RunConfig().train.bucket_pool is None and RunConfig().train.threads is None  # None: by the losses
    # grouped where every loss is one term per recipe (Deep Sets' held-out MLM, cls, multilabel/Hungarian sets);
    # not by default where a loss averages over positions (measured: grouping cost a shuffle decoder test MRR)
    assert bucket_pool_for(RunConfig()) == 0  # decoder, clm
    assert bucket_pool_for(RunConfig().override({"model.name": "deep-sets"})) == BUCKET_POOL
    assert bucket_pool_for(RunConfig().override({"model.name": "set-transformer", "loss.name": "hungarian"})) == 64
    assert bucket_pool_for(RunConfig().override({"model.name": "set-transformer"})) == 0  # element MLM
    assert position_averaged(RunConfig()) == ["clm"]
    assert position_averaged(RunConfig().override({"model.name": "deep-sets"})) == []  # held-out: per recipe
    assert position_averaged(RunConfig().override({"model.name": "set-transformer",
                                                   "objectives.weights": {"mlm": 1.0, "rtd": 1.0}})) == ["mlm", "rtd"]
    # an objective that does not declare how it weighs recipes (a plug-in's, say) keeps plain batches
    monkeypatch.setattr("recipeset.config.positions_of", lambda cfg, name: None)
    assert bucket_pool_for(RunConfig().override({"model.name": "deep-sets"})) == 0
    monkeypatch.undo()
    assert bucket_pool_for(RunConfig().override({"train.bucket_pool": 8})) == 8
    assert RunConfig().override({"train.bucket_pool": 0, "train.threads": 3}).train.threads == 3
    with pytest.raises(RecipesetError, match=r"train.threads: must be >= 1, got 0"):
        RunConfig().override({"train.threads": 0}, source="test")
    with pytest.raises(RecipesetError, match=r"train.threads: expected int"):
        RunConfig().override({"train.threads": "two"}, source="test")
    with pytest.raises(RecipesetError, match=r"train.bucket_pool: must be >= 0, got -1"):
        RunConfig().override({"train.bucket_pool": -1}, source="test")


def test_config_hash_tells_grouped_runs_from_the_runs_before_grouping():
    import hashlib

    from recipeset.config import canonical_json

    # the hash of a default config from before train.bucket_pool existed: every section empty
    before = hashlib.sha256(canonical_json({s: {} for s in RunConfig().to_dict() if s != "tracking"}).encode())
    old = {"train.bucket_pool": 0, "eval.query_draws": 1, "train.pack": False}  # the defaults of before
    assert RunConfig().override(old).config_hash() == before.hexdigest()
    unpacked = {"eval.query_draws": 1, "train.pack": False}  # a decoder (unpacked): no grouping by default
    assert RunConfig().override(unpacked).config_hash() == before.hexdigest()
    # a decoder grouped by hand is rescaled now: not one of the runs grouped without the rescaling
    unscaled = hashlib.sha256(canonical_json({**{s: {} for s in RunConfig().to_dict() if s != "tracking"},
                                              "train": {"bucket_pool": 64}}).encode())
    assert RunConfig().override({**unpacked, "train.bucket_pool": 64}).config_hash() != unscaled.hexdigest()
    assert RunConfig().override({"train.bucket_pool": 32}).config_hash() != RunConfig().config_hash()
    deep_sets = RunConfig().override({"model.name": "deep-sets"})  # grouped by default: hashes as grouped
    assert deep_sets.config_hash() == deep_sets.override({"train.bucket_pool": BUCKET_POOL}).config_hash()
    assert deep_sets.config_hash() != deep_sets.override({"train.bucket_pool": 0}).config_hash()


# ---- threads -----------------------------------------------------------------------------------------------
def test_threads_default_to_the_available_cores_over_the_jobs(monkeypatch):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert default_threads(1) == cores and default_threads(cores * 2) == 1
    assert resolve_threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # set by the user, or by the grid for its children
    assert resolve_threads(None) == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert resolve_threads(None) == cores


def test_passive_wait_policy_unless_the_user_chose_one():
    env = {}
    set_passive_wait_policy(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    set_passive_wait_policy(env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_cli_main_sets_the_policy_before_torch_is_imported():
    code = ("import os, sys\nsys.argv = ['recipeset', '--version']\nfrom recipeset.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-2:] == ["PASSIVE", "False"]


def test_grid_children_get_their_threads_and_the_passive_policy(tmp_path, monkeypatch):
    from recipeset import study
    from recipeset.experiments import PlannedRun

    started = []

    class Children:  # records what would be started
        running: list = []

        def __init__(self, jobs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def has_room(self):
            return True

        def start(self, name, argv, log_path, env=None):
            started.append(env)

        def wait(self, timeout=None):
            return []

        def new_lines(self):
            return []

    monkeypatch.setattr(study, "ChildProcesses", Children)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    run = PlannedRun("g/v/seed0", "v", 0, RunConfig(), "h")
    study._run_children_in_processes([run], str(tmp_path), "parent", "sqlite:///x.db", 2, print)
    assert started[0]["OMP_WAIT_POLICY"] == "PASSIVE" and started[0]["OMP_NUM_THREADS"] == str(default_threads(2))


def test_bench_bucketing_reports_both_kinds_of_batch():
    from recipeset.bench import bench_bucketing

    r = bench_bucketing(models=("deep-sets",), dataset="synthetic", batch_size=16, d_model=16, bucket_pool=4,
                        steps=2, warmup=1, threads=None)
    m = r["models"]["deep-sets"]
    assert r["steps"] == 2 and len(r["load_avg_before"]) == 3
    assert m["speedup"] > 0 and m["plain_recipes_per_s"] > 0 and m["grouped_recipes_per_s"] > 0
    assert m["grouped_real_fraction"] >= m["plain_real_fraction"]
    assert m["epoch_real_fraction_grouped"] > m["epoch_real_fraction_plain"]


# ---- rescaled position-averaged losses ---------------------------------------------------------------------
def _clm_setup(n_recipes: int = 120):
    import torch

    from recipeset.config import resolve_objectives
    from recipeset.data.prepare import prepare_data
    from recipeset.objectives.tasks import Objectives
    from recipeset.pipeline import build_model

    cfg = RunConfig().override({"data.n_recipes": n_recipes, "model.d_model": 16, "model.n_layers": 1,
                                "model.dropout": 0.0}, source="test")
    data = prepare_data(cfg.data)
    weights = resolve_objectives(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, data.vocab, weights, int(data.train.lengths.max())).eval()
    return cfg, data, model, Objectives(cfg, weights)


def test_rescaled_losses_weigh_every_position_the_same_however_the_batches_are_grouped():
    import torch

    from recipeset.data.collate import collate
    from recipeset.objectives.losses import next_token_targets, standard_loss

    cfg, data, model, objectives = _clm_setup()
    lengths = data.train.lengths
    rows = np.arange(96)
    plain = np.split(rows, 6)
    grouped = np.split(rows[np.argsort(lengths[rows], kind="stable")], 6)  # all-short ... all-long batches
    gen = torch.Generator().manual_seed(0)

    def total(batches, obj):  # Σ_b B_b · loss_b: what a pass over the rows weighs each position by
        with torch.no_grad():
            return sum(len(b) * float(obj(model, collate(data.train, b), gen)["loss/clm"]) for b in batches)

    def position_sum(idx):  # Σ of the next-ingredient losses over every position of these rows
        with torch.no_grad():
            b = collate(data.train, idx)
            tokens, mask, _ = model.feed(b.tokens, b.mask)  # [BOS] first
            return float(standard_loss(model(tokens, mask).logits, next_token_targets(b.tokens, b.mask),
                                       reduction="sum"))

    objectives.weigh_positions(lengths, type(model))
    w_mean = float((lengths + 1).mean())  # a training recipe's positions: its ingredients + [EOS]
    with torch.no_grad():  # one batch, by hand: Σ over its positions / (B · w̄)
        b = collate(data.train, plain[0])
        assert float(objectives(model, b, gen)["loss/clm"]) == pytest.approx(
            position_sum(plain[0]) / (len(plain[0]) * w_mean), rel=1e-5)
    # a pass over the rows weighs every position 1 / w̄, plain or grouped batches alike
    assert total(plain, objectives) == pytest.approx(position_sum(rows) / w_mean, rel=1e-5)
    assert total(grouped, objectives) == pytest.approx(position_sum(rows) / w_mean, rel=1e-5)


@pytest.mark.parametrize("n", [1, 3, 8, 20])
def test_masked_positions_is_the_expected_number_of_mlm_labels(n):
    import torch

    from recipeset.models.set_transformer import SetTransformer
    from recipeset.objectives.masking import mlm_mask
    from recipeset.objectives.tasks import masked_positions

    cfg = RunConfig().override({"model.name": "set-transformer"})
    B = 20000
    tokens = torch.arange(10, 10 + n).repeat(B, 1)
    mb = mlm_mask(tokens, torch.ones(B, n, dtype=torch.bool), 200, prob=cfg.objectives.mlm_prob,
                  generator=torch.Generator().manual_seed(n), null_prob=cfg.objectives.null_prob)
    observed = float((mb.labels != -100).sum()) / B
    assert observed == pytest.approx(masked_positions(float(n), cfg, SetTransformer), rel=0.03)
