"""Experiment files: grid expansion, seeds, quick mode, params-hash stability, errors naming file and key."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

import recipeset.study as study
from recipeset.errors import RecipesetError
from recipeset.experiments import load_experiment

STUDY = """
[experiment]
name = "order_study"
description = "order vs set training"

[base]
data.dataset = "flavornet"
train.max_steps = 3000

[[grid]]
name = "decoder-ce-frequency"
"data.order" = "frequency"

[[grid]]
name = "decoder-ce-shuffle"
data.order = "shuffle"

[[grid]]
name = "set-transformer-mlm"
"model.name" = "set-transformer"
"model.d_model" = 64
"objectives.weights" = { mlm = 1.0 }

[seeds]
values = [0, 1, 2]

[quick]
variants = ["decoder-ce-frequency", "set-transformer-mlm"]
seeds = [0]
overrides = { "train.max_steps" = 50 }
"""


def write(tmp_path: Path, text: str, name: str = "order_study.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_grid_expansion(tmp_path):
    exp = load_experiment(write(tmp_path, STUDY))
    runs = exp.runs()
    assert len(runs) == 9
    assert [r.name for r in runs[:3]] == [f"order_study/decoder-ce-frequency/seed{s}" for s in range(3)]
    assert {r.variant for r in runs} == {"decoder-ce-frequency", "decoder-ce-shuffle", "set-transformer-mlm"}
    by_name = {r.name: r for r in runs}
    st = by_name["order_study/set-transformer-mlm/seed2"].config
    assert st.model.name == "set-transformer" and st.model.params == {"d_model": 64}
    assert st.objectives.weights == {"mlm": 1.0}  # replaced, not merged with the default clm
    assert st.train.seed == 2 and st.data.split_seed == 0  # seeds never move the split
    assert by_name["order_study/decoder-ce-shuffle/seed0"].config.data.order == "shuffle"  # unquoted dotted key
    for r in runs:
        assert r.config.data.dataset == "flavornet" and r.config.train.max_steps == 3000
        assert r.config.tracking.experiment == "order_study" and r.config.tracking.run_name == r.name
        assert r.params_hash == r.config.config_hash()
    assert len({r.params_hash for r in runs}) == 9


def test_quick_mode(tmp_path):
    exp = load_experiment(write(tmp_path, STUDY))
    quick = exp.runs(quick=True)
    assert [r.name for r in quick] == ["order_study/decoder-ce-frequency/seed0",
                                       "order_study/set-transformer-mlm/seed0"]
    assert all(r.config.train.max_steps == 50 for r in quick)
    assert all(r.config.tracking.experiment == "order_study-quick" for r in quick)
    full = {r.name: r.params_hash for r in exp.runs()}
    assert all(full[r.name] != r.params_hash for r in quick)


def test_quick_defaults(tmp_path):
    text = STUDY.split("[quick]")[0]
    quick = load_experiment(write(tmp_path, text)).runs(quick=True)
    assert len(quick) == 3 and all(r.seed == 0 and r.config.train.epochs == 1 for r in quick)


def test_params_hash_is_stable_across_loads_and_key_spellings(tmp_path):
    a = load_experiment(write(tmp_path, STUDY)).runs()
    # The same file again, in another directory and with the tracking name changed: same hashes.
    other = STUDY.replace('name = "order_study"', 'name = "renamed"')
    b = load_experiment(write(tmp_path / "..", other, "renamed.toml")).runs()
    assert [r.params_hash for r in a] == [r.params_hash for r in b]
    # [base] as nested sections or dotted keys gives the same configs.
    nested = STUDY.replace('data.dataset = "flavornet"\ntrain.max_steps = 3000',
                           '"data" = { dataset = "flavornet" }\n"train.max_steps" = 3000')
    c = load_experiment(write(tmp_path, nested, "nested.toml")).runs()
    assert [r.params_hash for r in a] == [r.params_hash for r in c]


def test_no_grid_means_one_base_variant(tmp_path):
    exp = load_experiment(write(tmp_path, '[base]\n"train.epochs" = 1\n', "tiny.toml"))
    runs = exp.runs()
    assert exp.name == "tiny" and [r.name for r in runs] == ["tiny/base/seed0"]


@pytest.mark.parametrize("text, fragment", [
    (STUDY.replace('"data.order" = "frequency"', '"data.ordr" = "frequency"'),
     "[grid 'decoder-ce-frequency']: data.ordr: unknown key (did you mean 'order'?)"),
    (STUDY.replace('"model.name" = "set-transformer"', '"model.name" = "set-transfomer"'),
     "did you mean 'set-transformer'?"),
    (STUDY.replace('variants = ["decoder-ce-frequency", "set-transformer-mlm"]', 'variants = ["decoder-ce-freq"]'),
     "quick.variants: unknown variant 'decoder-ce-freq' (did you mean 'decoder-ce-frequency'?)"),
    (STUDY.replace("[seeds]", "[sedes]"), "sedes: unknown key (did you mean 'seeds'?)"),
    (STUDY.replace("values = [0, 1, 2]", "vals = [0, 1, 2]"), "seeds.vals: unknown key (did you mean 'values'?)"),
    (STUDY.replace("values = [0, 1, 2]", "values = [0, 0]"), "duplicate seeds"),
    (STUDY.replace('"train.max_steps" = 50', '"train.max_step" = 50'), "train.max_step: unknown key"),
    (STUDY.replace('name = "decoder-ce-shuffle"', 'name = "decoder-ce-frequency"'), "duplicate variant name"),
    (STUDY.replace('name = "decoder-ce-shuffle"', 'name = "has space"'), "grid[1].name"),
    (STUDY.replace('data.dataset = "flavornet"', 'dta.dataset = "flavornet"'),
     "base.dta: unknown section (did you mean 'data'?)"),
    (STUDY.replace("description =", "descr ="), "experiment.descr: unknown key (did you mean 'description'?)"),
])
def test_errors_name_file_and_key(tmp_path, text, fragment):
    p = write(tmp_path, text)
    with pytest.raises(RecipesetError) as e:
        load_experiment(p)
    assert fragment in str(e.value) and str(p) in str(e.value)


def test_experiment_files_in_repo_load():
    files = sorted((Path(__file__).parent.parent / "experiments").glob("*.toml"))
    for f in files:
        exp = load_experiment(f)
        assert exp.runs() and exp.runs(quick=True)


# ---- "best" = best on validation, reported on test ---------------------------------------------------------------
def test_selection_picks_on_validation_and_reports_test():
    import pandas as pd

    from recipeset.study import selection_table

    # variant "a" is better on validation, "b" on test: the protocol must pick "a"
    neural = pd.DataFrame({
        "variant": ["a", "a", "b", "b"],
        "val_eval/completion/recall_at_10": [0.70, 0.72, 0.60, 0.62],
        "test/completion/recall_at_10": [0.68, 0.70, 0.90, 0.90],
        "test/completion/mrr": [0.44, 0.45, 0.50, 0.50],
        "val_eval/cuisine/macro_f1": [0.30, 0.30, 0.50, 0.52],
        "test/cuisine/macro_f1": [0.31, 0.33, 0.40, 0.42],
    })
    base = pd.DataFrame([{
        "pop/val_eval/completion/recall_at_10": 0.40, "pop/test/completion/recall_at_10": 0.95,
        "pop/test/completion/mrr": 0.10,
        "knn/val_eval/completion/recall_at_10": 0.65, "knn/test/completion/recall_at_10": 0.66,
        "knn/test/completion/mrr": 0.43,
        "logistic/val_eval/cuisine/macro_f1": 0.45, "logistic/test/cuisine/macro_f1": 0.44,
    }])
    table = selection_table(neural, base).reset_index()
    comp = table[table["task"] == "completion"].set_index("metric")
    assert list(comp.index) == ["completion/recall_at_10", "completion/mrr"]
    assert set(comp["model (best on val)"]) == {"a"} and set(comp["baseline (best on val)"]) == {"knn"}
    r10, mrr = comp.loc["completion/recall_at_10"], comp.loc["completion/mrr"]
    assert r10["seeds"] == 2 and r10["model val"] == "0.71" and r10["baseline val"] == "0.65"
    assert r10["model test"] == "0.69 ± 0.014" and r10["baseline test"] == "0.66"
    assert r10["difference"] == "+0.0300" and r10["target"] == "met (≥ +0.02)"       # 0.69 - 0.66
    assert mrr["difference"] == "+0.0150" and mrr["target"] == "not met (≥ +0.02)"   # 0.445 - 0.43
    base.loc[0, "knn/test/completion/mrr"] = 0.425                     # exactly 0.02: "at least 0.02" is met
    table = selection_table(neural, base).reset_index().set_index("metric")
    assert table.loc["completion/mrr", "target"] == "met (≥ +0.02)"
    cuisine = table.loc["cuisine/macro_f1"]
    assert cuisine["model (best on val)"] == "b" and cuisine["difference"] == "-0.0300"
    assert cuisine["target"] == "not met (> 0)"
    base.loc[0, "logistic/test/cuisine/macro_f1"] = 0.40
    assert selection_table(neural, base).reset_index().set_index("metric").loc["cuisine/macro_f1",
                                                                                 "target"] == "met (> 0)"
    # no baselines: the model side alone, no verdict
    alone = selection_table(neural, pd.DataFrame())
    assert "target" not in alone.columns and set(alone.loc["completion", "model (best on val)"]) == {"a"}


def test_the_training_cost_table_separates_training_evaluation_and_mean_throughput(monkeypatch):
    runs = pd.DataFrame({
        "run_id": ["r1", "r2", "r3"], "status": ["FINISHED"] * 3,
        "time/wall_s": [100.0, 120.0, 50.0], "time/train_s": [60.0, 80.0, 40.0], "time/eval_s": [30.0, 30.0, 5.0],
        "time/steps": [2000.0, 2000.0, 2000.0], "train/mean_recipes_per_s": [2000.0, 1600.0, 3200.0],
        "train/recipes_per_s": [9999.0, 1.0, 5.0], "model.n_parameters": ["1000", "1000", "500"],
        "test/completion/mrr": [0.3, 0.32, 0.2]})
    variants = {"r1": "decoder", "r2": "decoder", "r3": "deep-sets"}
    monkeypatch.setattr(study, "search_runs_table", lambda experiment, uri=None: runs)
    monkeypatch.setattr(study, "run_tags", lambda ids, uri=None: {r: {"variant": variants[r]} for r in ids})
    cost = study.results_tables("order_study")["training_cost"]
    assert list(cost.columns) == ["seeds", "time/wall_s", "time/train_s", "time/eval_s", "time/steps",
                                  "train/mean_recipes_per_s", "model.n_parameters"]  # not the last step's rate
    assert cost.loc["decoder", "time/train_s"] == "70 ± 14" and cost.loc["decoder", "time/eval_s"] == "30 ± 0"
    assert cost.loc["deep-sets"].to_dict() == {"seeds": 1, "time/wall_s": "50", "time/train_s": "40",
                                               "time/eval_s": "5", "time/steps": "2000",
                                               "train/mean_recipes_per_s": "3200", "model.n_parameters": "500"}
    assert "| variant | seeds | time/wall_s | time/train_s | time/eval_s |" in study.tables_markdown(
        {"training_cost": cost})


# ---- every experiment file runs --------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parent.parent
EXPERIMENT_FILES = sorted((REPO / "experiments").glob("*.toml"))
# Every variant for two steps (one validation each, one checkpoint) and a few evaluation queries, on the first
# 120 recipes: the model, objectives, loss and order each variant names are built and trained for real.
SMOKE = {"train.max_steps": 2, "train.eval_every": 1, "train.checkpoint_every": 2, "train.warmup_steps": 1,
         "train.batch_size": 16, "train.device": "cpu", "data.n_recipes": 120, "eval.max_queries": 5,
         "eval.val_max_queries": 5, "eval.joint_max_queries": 1}


@pytest.fixture
def loaded_once(monkeypatch):
    """``load_dataset`` memoised for the test session: parsing flavornet's files takes ~2 s, once per variant
    otherwise (every call still gets the same table the real loader returns)."""
    import recipeset.data.prepare as prepare

    real = prepare.load_dataset

    def load_dataset(name_or_path, path=None, lenient=False, options=None, **kw):
        kw = {**(options or {}), **kw}
        key = (str(name_or_path), str(path), lenient, tuple(sorted(kw.items())))
        if key not in _TABLES:
            _TABLES[key] = real(name_or_path, path=path, lenient=lenient, options=kw)
        return _TABLES[key]

    monkeypatch.setattr(prepare, "load_dataset", load_dataset)


_TABLES: dict = {}


def smoke_overrides(run) -> dict:
    """SMOKE, plus the data: an experiment's relative ``data.path`` is relative to the repo root (where the
    grids run); a flavornet file runs on the synthetic dataset when flavornet is not there."""
    over = dict(SMOKE)
    data = run.config.data
    if data.dataset == "flavornet":
        path = (REPO / data.path).resolve() if data.path else None
        try:
            from recipeset.data.sources.flavornet import find_flavornet

            over["data.path"] = str(find_flavornet(path))
        except RecipesetError:
            over.update({"data.dataset": "synthetic", "data.path": None})
    elif data.path:
        over["data.path"] = str((REPO / data.path).resolve())
    return over


def test_there_are_experiment_files():
    assert len(EXPERIMENT_FILES) >= 3


def train_every_variant(path: Path) -> list[str]:
    """Each variant of the file (first seed) through ``run_training`` in file order, in the grid's own run
    directories under the working directory — so a fine-tuning variant's ``train.init_from`` (e.g.
    ``runs/objectives_study/set-transformer-mlm/seed{seed}/model``) finds the model its pre-training variant,
    listed before it, has just saved. Returns the run names; the first variant that fails raises."""
    from recipeset.pipeline import run_training
    from recipeset.study import child_dir

    exp = load_experiment(path)  # validates every variant's config (what runs with what, model params)
    planned = [r for r in exp.runs() if r.seed == exp.seeds[0]]
    for run in planned:
        cfg = run.config.override(smoke_overrides(run), source=f"{run.name} (test)")
        result = run_training(cfg, out_dir=child_dir(run, "runs"), track=False, progress=False)
        assert (result.model_dir / "weights.pt").exists(), run.name
        assert result.metrics and all(math.isfinite(v) for v in result.metrics.values()
                                      if isinstance(v, float)), (run.name, result.metrics)
    return [r.name for r in planned]


@pytest.mark.parametrize("path", EXPERIMENT_FILES, ids=lambda p: p.name)
def test_every_variant_of_the_experiment_file_trains(path, tmp_path, monkeypatch, loaded_once):
    monkeypatch.chdir(tmp_path)
    exp = load_experiment(path)
    assert train_every_variant(path) == [f"{exp.name}/{v.name}/seed{exp.seeds[0]}" for v in exp.variants]


def test_a_variant_that_cannot_be_built_fails_the_check(tmp_path, monkeypatch, loaded_once):
    """What the test above guards against: a file that loads and validates, with a variant whose model cannot be
    built (flavor-compound input features on the synthetic dataset)."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "broken.toml"
    path.write_text('[base]\ndata.dataset = "synthetic"\nmodel.name = "set-transformer"\nmodel.d_model = 16\n'
                    '"objectives.weights" = { mlm = 1.0 }\n[[grid]]\nname = "ok"\n[[grid]]\nname = "features"\n'
                    '"model.embedding" = "features"\n')
    assert len(load_experiment(path).runs()) == 2
    with pytest.raises(RecipesetError, match="model.embedding='features'"):
        train_every_variant(path)
    assert (tmp_path / "runs" / "broken" / "ok" / "seed0" / "model").is_dir()  # the good one ran first


# ---- the tuned run configs -----------------------------------------------------------------------------------
TUNED = sorted((Path(__file__).parent.parent / "experiments" / "tuned").glob("*.toml"))


@pytest.mark.parametrize("path", TUNED, ids=[p.stem for p in TUNED])
def test_tuned_configs_load_and_take_the_data_location_from_the_command_line(path, tmp_path):
    """``experiments/tuned/<family>.toml`` is a valid run config naming its dataset but not where it lives:
    ``recipeset train --config F --path DIR`` reads DIR (here a missing one: its one-line error names it)."""
    from click.testing import CliRunner

    from recipeset.cli import cli
    from recipeset.config import load_config

    cfg = load_config(path)
    assert path.stem.replace("_", "-").startswith(cfg.model.name) and cfg.data.path is None  # <family>[_<task>]
    missing = tmp_path / "nowhere"
    result = CliRunner().invoke(cli, ["train", "--config", str(path), "--path", str(missing), "--no-track",
                                       "--quiet", "--out", str(tmp_path / "run")])
    assert result.exit_code != 0 and str(missing) in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
