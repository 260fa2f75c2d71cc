"""The run pipeline (recipeset/pipeline.py): a tracked run end to end, the logged model, Bayes metrics on
synthetic, --init-from fine-tuning, and re-evaluation on the run's own saved split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import store_in

import recipeset
import recipeset.pipeline
from recipeset import protocol
from recipeset.config import RunConfig
from recipeset.data.prepare import prepare_data
from recipeset.errors import RecipesetError
from recipeset.pipeline import load_init_weights, run_data, run_training
from recipeset.protocol import STOP_THRESHOLDS, evaluate_model
from recipeset.training import Trainer, load_trainer_state

TINY = {"data.n_recipes": 400, "model.d_model": 16, "model.n_layers": 1, "train.batch_size": 32,
        "train.warmup_steps": 2, "train.device": "cpu", "eval.max_queries": 30, "eval.joint_max_queries": 10,
        "tracking.experiment": "pipeline-test"}


def tiny(**over) -> RunConfig:
    base = dict(TINY)
    if over.get("model.name") == "deep-sets":
        del base["model.n_layers"]
    return RunConfig().override({**base, **over}, source="test")


@pytest.fixture(scope="module")
def tracked(mlflow_template_db: Path, tmp_path_factory: pytest.TempPathFactory):
    """One tracked tiny run shared by the tests of this module (in its own cwd and store)."""
    root = tmp_path_factory.mktemp("pipeline")
    with store_in(mlflow_template_db, root) as uri:
        cfg = tiny(**{"train.max_steps": 20, "train.lr": 3e-3, "train.eval_every": 10})
        result = run_training(cfg, out_dir=root / "run", progress=False)
        yield {"root": root, "uri": uri, "result": result, "cfg": cfg}


@pytest.fixture
def in_store(tracked, monkeypatch):
    monkeypatch.chdir(tracked["root"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked["uri"])
    return tracked


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def artifact_paths(c, run_id: str, path: str = "") -> set[str]:
    out = set()
    for a in c.list_artifacts(run_id, path):
        out.add(a.path)
        if a.is_dir:
            out |= artifact_paths(c, run_id, a.path)
    return out


def test_tracked_run_is_finished_with_params_metrics_and_artifacts(in_store):
    result = in_store["result"]
    c = client(in_store["uri"])
    run = c.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == in_store["cfg"].tracking.run_name
    p = run.data.params
    assert p["model.d_model"] == "16" and p["model.name"] == "decoder" and p["loss.name"] == "standard"
    assert p["train.max_steps"] == "20" and p["objectives.weights.clm"] == "1.0"
    assert int(p["model.n_parameters"]) > 0
    assert run.data.tags["config_hash"] == in_store["cfg"].config_hash()
    assert run.data.tags["seed"] == "0"
    history = c.get_metric_history(result.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, 21))
    assert [m.step for m in c.get_metric_history(result.run_id, "val/loss")] == [10, 20]
    for key in ("train/lr", "train/grad_norm", "train/recipes_per_s", "train/tokens_per_s", "train/ppl/clm",
                "test/completion/mrr", "test/completion_joint/mrr", "val_eval/completion/mrr", "time/wall_s",
                "time/train_s", "time/eval_s", "train/mean_recipes_per_s"):
        assert key in run.data.metrics, key
    m = run.data.metrics
    assert 0 < m["time/train_s"] and 0 < m["time/eval_s"] and m["time/train_s"] + m["time/eval_s"] < m["time/wall_s"]
    assert (m["time/train_s"], m["time/eval_s"]) == (result.train_s, result.eval_s)
    state = load_trainer_state(result.out_dir / "checkpoint")[2]
    n_train = len(prepare_data(in_store["cfg"].data).train)
    epoch = [32] * (n_train // 32) + ([n_train % 32] if n_train % 32 else [])
    assert state.train_recipes == sum((epoch * 20)[:20])  # the recipes of the 20 steps (batch 32)
    assert m["train/mean_recipes_per_s"] == pytest.approx(state.train_recipes / state.train_s)
    # selection runs on `next` scoring; the costly joint scoring is a test-only report
    assert not any(k.startswith("val_eval/completion_joint/") for k in run.data.metrics)
    arts = artifact_paths(c, result.run_id)
    assert {"config.json", "data/split.json", "data/vocab.json", "eval.csv", "eval.json",
            "model/weights.pt", "model/config.json", "model/vocab.json", "model/split.json",
            "model/run_config.json", "plots/learning_curves.png"} <= arts
    assert any(a.startswith("plots/") and a.endswith(".png") for a in arts)
    # local run directory
    out = result.out_dir
    for name in ("config.json", "split.json", "eval.json", "eval.csv", "mlflow_run_id", "model", "best",
                 "checkpoint", "plots/learning_curves.png"):
        assert (out / name).exists(), name
    assert (out / "mlflow_run_id").read_text().strip() == result.run_id


def test_logged_model_loads_and_scores_like_the_local_one(in_store):
    result = in_store["result"]
    local = recipeset.load_model(result.model_dir)
    remote = recipeset.load_model(f"runs:/{result.run_id}/model")
    queries = [["tomato", "garlic"], [local.vocab.token(9)]]
    queries = [[q for q in qs if q in local.vocab.ingredients] or [local.vocab.token(8)] for qs in queries]
    torch.testing.assert_close(local.completion_scores(queries), remote.completion_scores(queries))
    assert local.complete(queries, max_new=5) == remote.complete(queries, max_new=5)


def test_bayes_metrics_on_synthetic_bound_the_model(in_store):
    m = in_store["result"].metrics
    bayes = {k for k in m if k.startswith("bayes/")}
    assert {"bayes/completion/recall@1", "bayes/completion/mrr", "bayes/set/micro_f1",
            "bayes/cuisine/accuracy"} <= bayes
    assert m["bayes/completion/recall@1"] >= m["completion/recall@1"]
    assert m["bayes/completion/mrr"] >= m["completion/mrr"]
    run = client(in_store["uri"]).get_run(in_store["result"].run_id)
    assert "test/bayes/completion/recall_at_1" in run.data.metrics


def test_eval_json_holds_the_test_metrics(in_store):
    result = in_store["result"]
    text = (result.out_dir / "eval.json").read_text()
    json.loads(text)
    assert "completion" in text and "mrr" in text


def test_evaluate_on_the_runs_own_split_reproduces_its_test_metrics(in_store):
    result = in_store["result"]
    for source in (str(result.model_dir), f"runs:/{result.run_id}/model"):
        model = recipeset.load_model(source)
        cfg, sets, _ = run_data(model, source, split="test")
        again = evaluate_model(model, sets, cfg)
        expected = {k: v for k, v in result.metrics.items() if not k.startswith("bayes/")}
        assert again == expected, source
    _, val_sets, _ = run_data(model, str(result.model_dir), split="val")
    assert evaluate_model(model, val_sets, cfg, joint=False) == result.val_metrics  # selection: next scoring


def test_run_data_on_another_dataset_file(in_store, tmp_path):
    model = recipeset.load_model(in_store["result"].model_dir)
    known = model.vocab.ingredients[:6]
    csv = tmp_path / "other.csv"
    csv.write_text("ingredients\n" + f"{known[0]};{known[1]};{known[2]}\n{known[3]};{known[4]};not_an_ingredient\n")
    cfg, sets, _ = run_data(model, str(in_store["result"].model_dir), dataset=str(csv))
    assert len(sets) == 2 and (sets.values == 6).sum() == 1  # the unknown ingredient is [UNK] (a miss)
    metrics = evaluate_model(model, sets, cfg)
    assert metrics["completion/n"] == 2


def test_run_dir_without_resume_and_resume_without_checkpoint_are_errors(in_store, tmp_path):
    with pytest.raises(RecipesetError, match="--resume"):
        run_training(tiny(**{"train.max_steps": 2}), out_dir=in_store["result"].out_dir, track=False)
    with pytest.raises(RecipesetError, match="nothing to resume"):
        run_training(tiny(**{"train.max_steps": 2}), out_dir=tmp_path / "empty", resume=True, track=False)


# ---- fine-tuning --------------------------------------------------------------------------------------------
def test_load_init_weights_copies_the_encoder_and_reports_new_heads(in_store):
    from recipeset.data.prepare import prepare_data
    from recipeset.pipeline import build_model

    source = recipeset.load_model(in_store["result"].model_dir)
    cfg = tiny(**{"objectives.weights": {"clm": 1.0, "cls": 1.0}})
    data = prepare_data(cfg.data, vocab=source.vocab)
    model = build_model(cfg, data.vocab, {"clm": 1.0, "cls": 1.0}, 20)
    new = load_init_weights(model, str(in_store["result"].model_dir))
    assert new == ["cuisine_head.bias", "cuisine_head.weight"]
    src = source.state_dict()
    for k, v in model.state_dict().items():
        if k in src:
            assert torch.equal(v, src[k]), k
    other = build_model(tiny(**{"model.name": "deep-sets", "objectives.weights": {"mlm": 1.0}}), data.vocab,
                        {"mlm": 1.0}, 20)
    with pytest.raises(RecipesetError, match="cannot initialise"):
        load_init_weights(other, str(in_store["result"].model_dir))
    wide = build_model(tiny(**{"model.d_model": 32}), data.vocab, {"clm": 1.0}, 20)
    with pytest.raises(RecipesetError, match="shapes differ"):
        load_init_weights(wide, str(in_store["result"].model_dir))


def test_init_from_starts_from_the_trained_weights_and_adds_a_cuisine_head(in_store, tmp_path):
    # alpha = 0: the optimised loss is the LM loss alone, so train/loss at step 1 is the CLM loss before any update
    over = {"train.max_steps": 1, "objectives.weights": {"clm": 1.0, "cls": 1.0}, "objectives.alpha": 0.0,
            "eval.tasks": ["cuisine"]}
    tuned = run_training(tiny(**over), out_dir=tmp_path / "tuned", init_from=str(in_store["result"].model_dir),
                         track=False, progress=False)
    fresh = run_training(tiny(**over), out_dir=tmp_path / "fresh", track=False, progress=False)
    loss = {name: load_trainer_state(r.out_dir / "checkpoint")[2].history["train/loss"][0][1]
            for name, r in (("tuned", tuned), ("fresh", fresh))}
    assert loss["tuned"] < loss["fresh"] - 0.05
    model = recipeset.load_model(tuned.model_dir)
    assert model.can_classify and "cuisine/accuracy" in tuned.metrics
    assert model.classify([[model.vocab.token(8)]]).shape == (1, model.vocab.num_cuisines)


# ---- the other model families through the pipeline ------------------------------------------------------------
@pytest.mark.parametrize("over", [
    {"model.name": "deep-sets"},
    {"model.name": "deep-sets", "loss.name": "multilabel"},
    {"model.name": "set-transformer", "loss.name": "hungarian"},
])
def test_other_families_run_and_evaluate(tmp_path, over):
    result = run_training(tiny(**{"train.max_steps": 3, **over}), out_dir=tmp_path / "run", track=False,
                          progress=False)
    m = result.metrics
    assert 0 <= m["completion/recall@10"] <= 1 and 0 <= m["set/micro_f1"] <= 1
    assert not any(k.startswith("completion_joint/") for k in m)  # joint scoring is for decoders only
    model = recipeset.load_model(result.model_dir)
    out = model.complete([[model.vocab.token(8)]], max_new=5)[0]
    assert len(out) == len(set(out)) <= 5 and model.vocab.token(8) not in out
    if over["model.name"] == "deep-sets":  # the stop threshold is tuned on validation and saved
        assert model.config.stop_threshold in STOP_THRESHOLDS


def test_tuning_validation_and_the_confusion_plot_use_the_capped_subsets(tmp_path, monkeypatch):
    seen = {}

    def recording(name, real):
        def wrapper(model, sets, **kw):
            seen[name] = sets
            return real(model, sets, **kw)
        return wrapper

    monkeypatch.setattr(protocol, "tune_stop_rule", recording("tune", protocol.tune_stop_rule))
    monkeypatch.setattr(recipeset.pipeline, "evaluate_cuisine",
                        recording("confusion", recipeset.pipeline.evaluate_cuisine))

    class RecordingTrainer(Trainer):
        def validate(self):
            seen["val_loss"] = self.val
            return super().validate()

    monkeypatch.setattr(recipeset.pipeline, "Trainer", RecordingTrainer)
    cfg = tiny(**{"model.name": "deep-sets", "objectives.weights": {"mlm": 1.0, "cls": 0.5}, "train.max_steps": 2,
                  "eval.val_max_queries": 12, "eval.max_queries": 25, "eval.tasks": ["set", "cuisine"],
                  "train.val_max_recipes": 15})
    result = run_training(cfg, out_dir=tmp_path / "run", track=False, progress=False)
    data = prepare_data(cfg.data)
    assert len(data.val_eval) > 15 and len(data.test_eval) > 25
    assert seen["val_loss"].to_lists() == protocol.eval_subset(data.val, 15, cfg.eval.seed).to_lists()
    assert RunConfig().train.val_max_recipes == 20000  # flavornet's whole validation split (~5.6k recipes)
    assert seen["tune"].to_lists() == protocol.val_subset(data.val_eval, cfg).to_lists() and len(seen["tune"]) == 12
    assert result.val_metrics["cuisine/n"] == 12
    # the plots (made for tracked runs): the confusion matrix on the test metrics' own queries
    history = {"train/loss": [(1, 2.0), (2, 1.0)]}
    recipeset.pipeline._plots(None, history, recipeset.load_model(result.model_dir), data, tmp_path, cfg)
    assert (tmp_path / "plots" / "cuisine_confusion.png").exists()
    assert seen["confusion"].to_lists() == protocol.test_subset(data.test_eval, cfg).to_lists()
    assert result.metrics["cuisine/n"] == len(seen["confusion"]) == 25


def test_untracked_run_is_deterministic(tmp_path):
    cfg = {"train.max_steps": 4, "train.deterministic": True, "eval.tasks": ["completion"]}
    a = run_training(tiny(**cfg), out_dir=tmp_path / "a", track=False, progress=False)
    b = run_training(tiny(**cfg), out_dir=tmp_path / "b", track=False, progress=False)
    torch.use_deterministic_algorithms(False)
    assert a.metrics == b.metrics and a.run_id is None
    wa = torch.load(a.model_dir / "weights.pt", weights_only=True)
    wb = torch.load(b.model_dir / "weights.pt", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.loads((a.out_dir / "split.json").read_text()) == json.loads((b.out_dir / "split.json").read_text())
    assert np.isfinite(list(a.metrics.values())).all()


def test_default_run_name_names_the_objectives_really_trained():
    from recipeset.pipeline import default_run_name

    assert default_run_name(tiny(**{"model.name": "set-transformer"})) == \
        "synthetic-set-transformer-standard-mlm-frequency-seed0"
    assert default_run_name(tiny(**{"loss.name": "set-ar", "train.seed": 3})) == \
        "synthetic-decoder-set-ar-set-frequency-seed3"
    assert default_run_name(tiny(**{"objectives.weights": {"clm": 1.0, "cls": 0.5}})) == \
        "synthetic-decoder-standard-clm+cls-frequency-seed0"


def test_balanced_cuisine_loss_trains_through_the_pipeline(tmp_path):
    over = {"model.name": "deep-sets", "objectives.weights": {"cls": 1.0}, "eval.tasks": ["cuisine"],
            "train.max_steps": 10, "train.eval_every": 10, "train.lr": 3e-3}
    runs = {mode: run_training(tiny(**over, **{"objectives.cls_class_weight": mode}), out_dir=tmp_path / mode,
                               track=False, progress=False) for mode in ("none", "balanced")}
    for r in runs.values():
        assert 0 <= r.metrics["cuisine/macro_f1"] <= 1
    # same seed, same data order: only the loss weighting differs, so the trained heads do too
    heads = [recipeset.load_model(r.model_dir).cuisine_head.weight.detach() for r in runs.values()]
    assert heads[0].shape == heads[1].shape and not torch.allclose(heads[0], heads[1])
