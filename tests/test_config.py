"""RunConfig: file loading, overrides, validation messages, flatten/hash/save round trips."""

from __future__ import annotations

import json

import pytest

from recipeset.config import RunConfig, load_config
from recipeset.errors import RecipesetError
from recipeset.registry import LOSSES, MODELS, OBJECTIVES, ORDERS


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_names_match_the_design():
    assert set(MODELS.names()) == {"decoder", "set-transformer", "deep-sets"}
    # DESIGN.md's five losses, plus multilabel for Deep Sets (README, design notes)
    assert LOSSES.names() == ("standard", "hungarian", "set-ar", "min-perm", "pooled", "multilabel")
    assert OBJECTIVES.names() == ("clm", "mlm", "cls", "rtd", "coherence", "set")
    assert ORDERS.names() == ("frequency", "alphabetical", "random-fixed", "shuffle", "k-perms", "given")


def test_defaults():
    c = RunConfig()
    assert c.data.dataset == "synthetic" and c.model.name == "decoder" and c.loss.name == "standard"
    assert c.objectives.weights == {"clm": 1.0} and c.train.schedule == "cosine"
    assert RunConfig().objectives.weights is not c.objectives.weights  # no shared mutable defaults


def test_load_toml(tmp_path):
    p = write(tmp_path, "run.toml", """
[data]
dataset = "flavornet"
order = "shuffle"
mix = [{ dataset = "whatscooking", weight = 2 }]
[model]
name = "set-transformer"
d_model = 64
n_slots = 32
[loss]
name = "hungarian"
[objectives]
weights = { set = 1.0, cls = 0.5 }
[train]
epochs = 2
lr = 1
""")
    c = load_config(p)
    assert c.data.order == "shuffle" and c.model.params == {"d_model": 64, "n_slots": 32}
    assert c.loss.name == "hungarian" and c.objectives.weights == {"set": 1.0, "cls": 0.5}
    assert c.train.lr == 1.0 and isinstance(c.train.lr, float)  # ints are accepted for floats
    assert c.data.mix == [{"dataset": "whatscooking", "path": None, "weight": 2.0}]


def test_json_round_trip_via_save(tmp_path):
    c = RunConfig().override({"model.d_model": 32, "loss.name": "set-ar", "objectives.weights": {"set": 1, "cls": 0.5}})
    c.save(tmp_path / "c.json")
    back = load_config(tmp_path / "c.json")
    assert back == c and back.config_hash() == c.config_hash()
    assert json.loads((tmp_path / "c.json").read_text())["model"] == {"name": "decoder", "d_model": 32}


def test_typo_in_loss_name_names_file_key_and_suggestion(tmp_path):
    p = write(tmp_path, "bad.toml", '[loss]\nname = "hungrian"\n')
    with pytest.raises(RecipesetError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "loss.name" in msg and "unknown loss 'hungrian'" in msg
    assert "did you mean 'hungarian'?" in msg and "valid: standard, hungarian" in msg


@pytest.mark.parametrize("text, fragment", [
    ("[train]\nepoch = 3\n", "train.epoch: unknown key (did you mean 'epochs'?)"),
    ("[trian]\nepochs = 3\n", "trian: unknown section (did you mean 'train'?)"),
    ("[data]\norder = \"shufle\"\n", "data.order: unknown order 'shufle' (did you mean 'shuffle'?)"),
    ("[model]\nname = \"decodr\"\n", "model.name: unknown model 'decodr' (did you mean 'decoder'?)"),
    ("[objectives]\nweights = { clx = 1.0 }\n", "unknown objective 'clx' (did you mean 'cls'?)"),
    ("[train]\nepochs = \"3\"\n", "train.epochs: expected int, got str"),
    ("[train]\nbatch_size = 0\n", "train.batch_size: must be >= 1"),
    ("[train]\ndeterministic = 1\n", "train.deterministic: expected bool"),
    ("[train]\nschedule = \"cosin\"\n", "did you mean 'cosine'?"),
    ("[objectives]\nweights = { clm = 0.0 }\n", "at least one objective needs a positive weight"),
    ("[objectives]\nalpha = 1.5\n", "objectives.alpha: must be >= 0 and <= 1"),
    ("[data]\nmix = [{ dataset = \"a\", wieght = 1 }]\n", "data.mix[0].wieght: unknown key (did you mean 'weight'?)"),
    ("[eval]\ntasks = [\"completon\"]\n", "did you mean 'completion'?"),
    ("[train]\ndevice = \"gpu\"\n", "train.device: unknown device"),
    ("train = 3\n", "train: expected a table"),
    ("[train\n", "invalid TOML"),
])
def test_bad_files_raise_one_clear_line(tmp_path, text, fragment):
    p = write(tmp_path, "c.toml", text)
    with pytest.raises(RecipesetError) as e:
        load_config(p)
    assert fragment in str(e.value) and str(p) in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(RecipesetError, match="no such file"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(RecipesetError, match="use .toml or .json"):
        load_config(write(tmp_path, "c.yaml", "a: 1"))


def test_override_returns_a_validated_copy():
    base = RunConfig()
    c = base.override({"model.d_model": 64, "loss.name": "pooled", "train.epochs": 2})
    assert (c.model.params, c.loss.name, c.train.epochs) == ({"d_model": 64}, "pooled", 2)
    with pytest.raises(RecipesetError, match="loss 'hungarian' does not run with model 'decoder'"):
        base.override({"loss.name": "hungarian"})  # what runs with what is checked with the config
    assert base.model.params == {} and base.train.epochs == 10
    with pytest.raises(RecipesetError, match="overrides: train.epochs: expected int"):
        base.override({"train.epochs": 2.5})
    with pytest.raises(RecipesetError, match="loss.nmae: unknown key for loss 'standard' \\(did you mean 'name'\\?\\)"):
        base.override({"loss.nmae": "x"})
    with pytest.raises(RecipesetError, match="loss.k: unknown key for loss 'standard' \\('k' is a parameter of loss "
                                             "'min-perm'\\)"):
        base.override({"loss.k": 8})
    with pytest.raises(RecipesetError, match="'train.epochs' has no sub-keys"):
        base.override({"train.epochs.x": 1})


def test_objective_weights_replace_or_set_one_entry():
    c = RunConfig().override({"model.name": "set-transformer", "objectives.weights": {"mlm": 1.0}})
    assert c.objectives.weights == {"mlm": 1.0}
    c = c.override({"objectives.weights.cls": 1})
    assert c.objectives.weights == {"mlm": 1.0, "cls": 1.0}


def test_flatten_gives_mlflow_param_names():
    flat = RunConfig().override({"model.d_model": 64, "objectives.weights.cls": 0.5}).flatten()
    assert flat["model.name"] == "decoder" and flat["model.d_model"] == 64
    assert flat["loss.name"] == "standard" and flat["train.epochs"] == 10
    assert flat["objectives.weights.clm"] == 1.0 and flat["objectives.weights.cls"] == 0.5
    assert "model.params" not in flat and all(k.count(".") >= 1 for k in flat)


def test_config_hash_is_stable_and_ignores_tracking():
    a = RunConfig().override({"model.d_model": 64, "loss.name": "pooled"})
    b = RunConfig().override({"loss.name": "pooled", "model.d_model": 64})  # other insertion order
    assert a.config_hash() == b.config_hash()
    assert len(a.config_hash()) == 64
    assert a.override({"tracking.experiment": "x", "tracking.run_name": "y"}).config_hash() == a.config_hash()
    assert a.override({"train.seed": 1}).config_hash() != a.config_hash()


def test_config_hash_covers_only_the_fields_off_their_defaults():
    # so a field added with a default in a later version leaves every existing hash (and grid resume) alone;
    # a field whose default changed what a run trains counts off its value from before (HASH_BASELINES)
    import hashlib

    from recipeset.config import canonical_json

    c = RunConfig().override({"train.seed": 1, "model.d_model": 32}, source="test")
    sections = {s: {} for s in c.to_dict() if s != "tracking"}
    # a decoder: not grouped (as before), packed (unlike before)
    sections["train"], sections["model"] = {"seed": 1, "pack": True}, {"d_model": 32}
    sections["eval"] = {"query_draws": c.eval.query_draws}  # (objectives.held_out: not a decoder's field)
    assert c.config_hash() == hashlib.sha256(canonical_json(sections).encode()).hexdigest()
    assert c.override({"train.lr": RunConfig().train.lr}).config_hash() == c.config_hash()


def test_unknown_class_weighting_is_a_one_line_error():
    with pytest.raises(RecipesetError, match=r"objectives.cls_class_weight.*balanced"):
        RunConfig().override({"objectives.cls_class_weight": "balance"}, source="test")


def test_model_params_are_checked_against_the_model_config():
    assert RunConfig().override({"model.d_model": 64}).model.params == {"d_model": 64}
    with pytest.raises(RecipesetError) as e:
        RunConfig().override({"model.d_modle": 64}, source="run.toml")
    assert "run.toml: model.d_modle: unknown parameter for model 'decoder' (did you mean 'd_model'?)" in str(e.value)


@pytest.mark.parametrize("key, value, fragment", [
    ("model.d_model", 0, "model.d_model: must be >= 1, got 0"),
    ("model.d_model", "ten", "model.d_model: expected int, got str 'ten'"),
    ("model.dropout", 1.5, "model.dropout: must be >= 0 and < 1, got 1.5"),
    ("model.n_layers", 0, "model.n_layers: must be >= 1, got 0"),
    ("model.embedding", "learnt", "unknown embedding 'learnt' (did you mean 'learned'?)"),
    ("model.n_heads", 3, "cli: model.d_model=128 must be divisible by n_heads=3"),
    ("loss.label_smoothing", 1.0, "loss.label_smoothing: must be >= 0 and < 1, got 1.0"),
])
def test_model_and_loss_fields_have_ranges(key, value, fragment):
    with pytest.raises(RecipesetError) as e:
        RunConfig().override({key: value}, source="cli")
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_loss_params_belong_to_their_loss_and_keep_the_hash_of_defaults():
    c = RunConfig().override({"loss.name": "min-perm", "loss.k": 6})
    assert c.loss_params().k == 6 and c.flatten()["loss.k"] == 6
    # a loss parameter left at its declared default does not change the hash (as before the registry)
    assert RunConfig().override({"loss.name": "min-perm", "loss.k": 4}).config_hash() == \
        RunConfig().override({"loss.name": "min-perm"}).config_hash()
