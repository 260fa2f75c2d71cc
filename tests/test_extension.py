"""Extending recipeset without editing the package: a new set loss and a new (toy) model, each one definition
plus one registration in this file, trained through ``recipeset train`` and through the Python API."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from recipeset.cli import cli
from recipeset.config import RunConfig
from recipeset.fields import spec
from recipeset.models.base import (
    ModelOutput,
    RecipeModel,
    inference,
    mask_ids,
    resolve_sizes,
    safe_log_softmax,
    special_bias,
)
from recipeset.models.io import load_model
from recipeset.objectives.losses import IGNORE
from recipeset.objectives.tasks import multi_hot, split_query
from recipeset.pipeline import run_training
from recipeset.registry import LOSSES, MODELS, register_loss, register_model, what_runs_with_what

TINY = ["data.n_recipes=300", "train.batch_size=32", "train.warmup_steps=1", "eval.max_queries=40",
        "eval.val_max_queries=40", "train.device=cpu"]


# ---- the new loss: one function + one registration -------------------------------------------------------------
def uniform_set(objectives, model, batch, generator, cache) -> torch.Tensor:
    """Hide a random part of each set; cross-entropy of ``set_logits`` against the uniform distribution over the
    hidden ingredients (a softmax set loss for pooled heads)."""
    q_tokens, q_mask, targets = split_query(batch, generator)
    logits = model(q_tokens, q_mask, model.condition(batch.cuisine)).set_logits
    hidden = multi_hot(targets.clamp_min(0), targets != IGNORE, logits.shape[-1])
    logp = safe_log_softmax(logits.float()).masked_fill(hidden == 0, 0.0)
    return -((hidden * logp).sum(1) / hidden.sum(1).clamp(min=1)).mean()


# ---- the new model: one class (+ its config dataclass) + one registration ----------------------------------------
@dataclass
class BagConfig:
    vocab_size: int = 0
    n_cuisines: int = 0
    d_model: int = spec(16, ge=1)
    embedding: str = "learned"
    stop_threshold: float = spec(0.2, ge=0)
    cuisine_head: bool = False
    cuisine_condition: bool = False


class BagOfEmbeddings(RecipeModel):
    """Mean of the ingredient embeddings → a linear head over the vocabulary."""

    model_type = "bag-of-embeddings"
    config_class = BagConfig
    objectives = ("mlm", "set")
    set_head = "pooled"
    masked_prediction = "held-out"
    default_objective = "mlm"
    about = {"what": "a toy: mean of the ingredient embeddings → linear", "stops": "a threshold"}

    def __init__(self, config: BagConfig, vocab, input_features=None) -> None:
        config = resolve_sizes(config, vocab, input_features)
        super().__init__(config, vocab)
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size)
        self.register_buffer("bias", special_bias(config.vocab_size), persistent=False)

    def forward(self, tokens, mask, cuisine=None, segments=None) -> ModelOutput:
        w = mask.float()[..., None]
        pooled = (self.embed(tokens) * w).sum(1) / w.sum(1).clamp(min=1)
        return ModelOutput(pooled=pooled, set_logits=mask_ids(self.head(pooled) + self.bias, tokens, mask))

    @inference
    def completion_scores_ids(self, tokens, mask, mode="next", cuisine=None):
        return safe_log_softmax(self(tokens.to(self.device), mask.to(self.device)).set_logits.float())

    @inference
    def complete_ids(self, tokens, mask, max_new=20, cuisine=None, temperature=0.0, top_k=None, generator=None):
        logp = self.completion_scores_ids(tokens, mask)
        top = logp.topk(min(max_new, logp.shape[1]), dim=1)
        keep = top.values.exp() >= self.config.stop_threshold
        return [top.indices[b][keep[b]].tolist() for b in range(len(logp))]


@pytest.fixture
def registered():
    """Register the two for one test, and leave the registries as they were."""
    register_loss("uniform-set", heads=("pooled",), help="softmax over the hidden part")(uniform_set)
    register_model(BagOfEmbeddings)
    yield
    LOSSES.unregister("uniform-set")
    MODELS.unregister("bag-of-embeddings")


def train_cli(tmp_path, *args: str):
    over = [x for kv in TINY for x in ("--set", kv)]
    result = CliRunner().invoke(cli, ["train", "--no-track", "--quiet", "--max-steps", "3", *over, *args],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_the_registries_offer_the_new_loss_and_model(registered):
    help_text = CliRunner().invoke(cli, ["train", "--help"]).output
    assert "bag-of-embeddings" in help_text and "uniform-set" in help_text
    assert "uniform-set" in what_runs_with_what()  # the README table is derived from the registries
    # what runs with what follows the capabilities: the new loss trains every pooled-head model
    cfg = RunConfig().override({"model.name": "deep-sets", "loss.name": "uniform-set"})
    assert cfg.objectives.weights == {"clm": 1.0} and cfg.loss.name == "uniform-set"
    with pytest.raises(Exception, match="loss 'uniform-set' does not run with model 'decoder'"):
        RunConfig().override({"loss.name": "uniform-set"})


def test_new_model_and_new_loss_train_through_recipeset_train(registered, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bag"
    result = train_cli(tmp_path, "--model", "bag-of-embeddings", "--out", str(out))
    assert "completion/recall@10" in result.output
    model = load_model(out / "model")
    assert isinstance(model, BagOfEmbeddings) and len(model.complete([["tomato"]], max_new=3)[0]) <= 3
    out2 = tmp_path / "ds"
    train_cli(tmp_path, "--model", "deep-sets", "--loss", "uniform-set", "--out", str(out2))
    assert not load_model(out2 / "model").config.multilabel  # the softmax loss sets no multilabel head


def test_new_model_and_new_loss_train_through_the_python_api(registered, tmp_path):
    overrides = {k: int(v) if v.isdigit() else v for k, v in (kv.split("=") for kv in TINY)}
    cfg = RunConfig().override({**overrides, "model.name": "bag-of-embeddings", "loss.name": "uniform-set",
                                "train.max_steps": 4})
    result = run_training(cfg, out_dir=tmp_path / "run", track=False, progress=False)
    assert result.metrics["completion/n"] > 0 and 0.0 <= result.metrics["completion/mrr"] <= 1.0
    assert "set/micro_f1" in result.metrics
    model = load_model(result.model_dir)
    scores = model.completion_scores([["tomato", "garlic"]])
    assert scores.shape == (1, len(model.vocab)) and torch.isinf(scores[0, model.vocab.encode(["tomato"])]).all()


def test_a_plugin_module_extends_the_command_line(tmp_path):
    # from the shell: $RECIPESET_PLUGINS names a module that registers a loss; `recipeset train --help` offers it
    (tmp_path / "my_plugin.py").write_text(
        "import torch\n"
        "from recipeset.registry import register_loss\n"
        "@register_loss('plugin-set', heads=('pooled',), help='a plug-in loss')\n"
        "def plugin_set(objectives, model, batch, generator, cache):\n"
        "    return torch.zeros(())\n")
    env = {**os.environ, "RECIPESET_PLUGINS": "my_plugin",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "recipeset.cli", "train", "--help"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "plugin-set" in res.stdout
    env["RECIPESET_PLUGINS"] = "no_such_plugin"
    res = subprocess.run([sys.executable, "-m", "recipeset.cli", "train", "--loss", "standard", "--max-steps", "1",
                          "--no-track"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "$RECIPESET_PLUGINS: cannot import plug-in module 'no_such_plugin'" in res.stderr
