"""Save/load: a fresh process reproduces the outputs exactly; code-running pickles and broken dirs are refused."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import recipeset
from recipeset.data.vocab import NUM_SPECIALS, Vocabulary
from recipeset.errors import RecipesetError
from recipeset.models import (
    CausalDecoder,
    DecoderConfig,
    DeepSets,
    DeepSetsConfig,
    SetTransformer,
    SetTransformerConfig,
    load_model,
    save_model,
)

torch.set_num_threads(1)
VOCAB = Vocabulary(["tomato", "mozzarella", "basil", "olive_oil", "garlic", "soy_sauce", "ginger", "rice"],
                   ["italian", "japanese"])
QUERIES = [["tomato", "mozzarella"], ["soy_sauce"], []]


def _models():
    feats = torch.rand(len(VOCAB), 3, generator=torch.Generator().manual_seed(0))
    specs = {
        "decoder": (CausalDecoder, DecoderConfig(d_model=16, n_layers=1, n_heads=2, cuisine_head=True,
                                                 train_order="shuffle", joint_orders=2)),
        "decoder-features": (CausalDecoder, DecoderConfig(d_model=16, n_layers=1, n_heads=2, positions=True,
                                                          embedding="features", feature_bias=True)),
        "set-transformer": (SetTransformer, SetTransformerConfig(d_model=16, n_heads=2, n_layers=1, block="isab",
                                                                 n_inducing=2, n_slots=3, cuisine_condition=True)),
        "deep-sets": (DeepSets, DeepSetsConfig(d_model=16, cuisine_head=True, stop_threshold=0.0)),
    }
    out = {}
    for name, (cls, cfg) in specs.items():
        torch.manual_seed(0)
        model = cls(cfg, VOCAB, feats if cfg.embedding == "features" else None)
        with torch.no_grad():  # move away from the tiny init so outputs are distinctive
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
        out[name] = model.eval()
    out["deep-sets"].set_cuisine_offsets([0.7, -0.7])  # a tuned decision rule is saved with the model
    return out


def _outputs(model) -> dict:
    out = {"next": model.completion_scores(QUERIES).tolist(), "complete": model.complete(QUERIES, max_new=4)}
    if "joint" in model.scoring_modes:
        out["joint"] = model.completion_scores(QUERIES, mode="joint").tolist()
    if model.can_classify:
        out["classify"] = model.classify(QUERIES).tolist()
    return out


def test_save_load_in_fresh_process_gives_identical_outputs(tmp_path):
    # every model family in one fresh process (a new interpreter per model cost ~3.5 s each)
    names = ["decoder", "decoder-features", "set-transformer", "deep-sets"]
    models, paths, expected = _models(), {}, {}
    for name in names:
        paths[name] = str(save_model(models[name], tmp_path / name, extra_files={"run_config.json": "{}"}))
        assert sorted(p.name for p in Path(paths[name]).iterdir()) == ["config.json", "run_config.json",
                                                                       "vocab.json", "weights.pt"]
        expected[name] = {"type": type(models[name]).__name__, "out": _outputs(models[name])}
    script = textwrap.dedent(f"""
        import json, sys, torch
        torch.set_num_threads({torch.get_num_threads()})  # float sums depend on the thread count
        import recipeset
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_model_io import QUERIES, _outputs
        out = {{}}
        for name, path in {paths!r}.items():
            model = recipeset.load_model(path)
            out[name] = {{"type": type(model).__name__, "out": _outputs(model)}}
        print(json.dumps(out))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    for name in names:  # bit-identical floats, same completions
        assert got[name] == json.loads(json.dumps(expected[name])), name


def test_load_in_process_restores_config_vocab_and_eval_mode(tmp_path):
    model = _models()["set-transformer"]
    save_model(model.train(), tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded, SetTransformer) and not loaded.training
    assert loaded.config == model.config and loaded.vocab == VOCAB
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_save_overwrites_atomically(tmp_path):
    models = _models()
    save_model(models["deep-sets"], tmp_path / "m")
    save_model(models["decoder"], tmp_path / "m")
    assert isinstance(load_model(tmp_path / "m"), CausalDecoder)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


class _Evil:
    """Pickles to ``os.system("touch <marker>")``: loading it with plain pickle would run the command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    path = save_model(_models()["deep-sets"], tmp_path / "m")
    marker = tmp_path / "pwned"
    state = torch.load(path / "weights.pt", weights_only=True)
    state["evil"] = _Evil(marker)
    torch.save(state, path / "weights.pt")
    with pytest.raises(RecipesetError, match="refused to load") as e:
        load_model(path)
    assert not marker.exists()
    _says_only_why(str(e.value), path / "weights.pt", "could run code", "system")
    with pytest.raises(RecipesetError, match="refused to load"):  # through the public lazy import, too
        recipeset.load_model(str(path))
    assert not marker.exists()


def _says_only_why(message: str, file: Path, *needles: str) -> None:
    """A refusal names the file and why, in one line of its own — never torch's advice to load unsafely."""
    assert message.startswith(f"{file}: refused to load: ") and "\n" not in message
    assert "weights_only" not in message and "False" not in message and "Re-running" not in message, message
    for needle in needles:
        assert needle in message, message


def test_refusals_never_suggest_loading_unsafely(tmp_path):
    """Every way a weights file can be refused (a code-running pickle in the model directory or in a run's
    checkpoint that --resume reads, a pickle of other objects, bytes that are not a torch file, a truncated file)
    gets recipeset's own one-line reason."""
    path = save_model(_models()["deep-sets"], tmp_path / "m")
    weights = path / "weights.pt"
    good = weights.read_bytes()
    torch.save({"w": torch.zeros(1), "p": Path("x")}, weights)  # not code, but not a tensor either
    with pytest.raises(RecipesetError) as e:
        load_model(path)
    _says_only_why(str(e.value), weights, "could run code", "Path")
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(RecipesetError) as e:
        load_model(path)
    _says_only_why(str(e.value), weights, "not a readable tensor file")
    weights.write_bytes(b"garbage")
    with pytest.raises(RecipesetError) as e:
        load_model(path)
    _says_only_why(str(e.value), weights, "not a plain tensor file")


def test_broken_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(RecipesetError, match="model directory not found"):
        load_model(tmp_path / "nope")
    path = save_model(_models()["deep-sets"], tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())

    (path / "config.json").write_text(json.dumps({**cfg, "model_type": "lstm"}))
    with pytest.raises(RecipesetError, match="unknown model_type 'lstm'"):
        load_model(path)
    (path / "config.json").write_text(json.dumps({**cfg, "config": {**cfg["config"], "d_modle": 3}}))
    with pytest.raises(RecipesetError, match="d_modle"):
        load_model(path)
    (path / "config.json").write_text(json.dumps({**cfg, "config": {**cfg["config"], "d_model": 32}}))
    with pytest.raises(RecipesetError, match="do not fit"):
        load_model(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(RecipesetError, match="not valid JSON"):
        load_model(path)
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "weights.pt").write_bytes(b"garbage")
    with pytest.raises(RecipesetError, match="refused to load"):
        load_model(path)
    (path / "weights.pt").unlink()
    with pytest.raises(RecipesetError, match="weights.pt: missing"):
        load_model(path)
    (path / "config.json").unlink()
    with pytest.raises(RecipesetError, match="config.json: missing"):
        load_model(path)


def test_extra_file_names_cannot_clobber_the_checkpoint(tmp_path):
    for bad in ("weights.pt", "../x", ".hidden"):
        with pytest.raises(RecipesetError, match="extra file name"):
            save_model(_models()["deep-sets"], tmp_path / "m", extra_files={bad: "x"})


def test_mlflow_uris_are_resolved_above_the_model_layer(tmp_path, monkeypatch):
    """``recipeset.load_model`` downloads runs:/ and models:/ URIs (recipeset.runs) and hands the directory to
    ``recipeset.models.io.load_model``, which refuses URIs itself: the model layer does not depend on MLflow."""
    import recipeset.runs

    path = save_model(_models()["deep-sets"], tmp_path / "m")
    seen = []

    def download_model_dir(uri: str) -> str:
        seen.append(uri)
        return str(path)

    monkeypatch.setattr(recipeset.runs, "download_model_dir", download_model_dir)
    assert isinstance(recipeset.load_model("runs:/abc123/model"), DeepSets)
    assert isinstance(recipeset.load_model("models:/recipes/1"), DeepSets)
    assert isinstance(recipeset.load_model(path), DeepSets)  # a local directory is not downloaded
    assert seen == ["runs:/abc123/model", "models:/recipes/1"]
    for uri in ("runs:/abc123/model", "models:/recipes/1"):
        with pytest.raises(RecipesetError, match="an MLflow URI; .*use recipeset.load_model"):
            load_model(uri)
    assert seen == ["runs:/abc123/model", "models:/recipes/1"]


def test_features_buffer_is_saved(tmp_path):
    model = _models()["decoder-features"]
    loaded = load_model(save_model(model, tmp_path / "m"))
    assert loaded.config.n_features == 3
    assert torch.equal(loaded.embed.features, model.embed.features)
    assert torch.isfinite(loaded.completion_scores([["tomato"]])[0, NUM_SPECIALS + 1:]).all()  # tomato is the query
