"""``train.init_from``: a run config can name the model a fine-tuning run starts from, with a ``{seed}``
placeholder (so one grid variant fine-tunes each seed's own pre-trained model); the ``init_from`` argument of
``run_training`` (the CLI's ``--init-from``) wins; a missing model is one clear error."""

from __future__ import annotations

import pytest
import torch

from recipeset.config import RunConfig
from recipeset.errors import RecipesetError
from recipeset.models.io import load_model
from recipeset.pipeline import run_training

torch.set_num_threads(1)
TINY = {"data.n_recipes": 200, "model.name": "set-transformer", "model.d_model": 16, "model.n_layers": 1,
        "model.n_heads": 2, "train.batch_size": 32, "train.warmup_steps": 0, "train.device": "cpu",
        "train.checkpoint_every": 1000}


def _run(over: dict, out, init_from=None):
    cfg = RunConfig().override({**TINY, **over}, source="test")
    return run_training(cfg, out_dir=out, init_from=init_from, track=False, progress=False, evaluate=False)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pre")
    _run({"objectives.weights": {"mlm": 1.0}, "train.max_steps": 3, "train.seed": 4}, root / "seed4")
    return root


def test_init_from_expands_seed_and_loads_the_weights(pretrained, tmp_path):
    template = str(pretrained / "seed{seed}" / "model")
    # lr ~ 0: after one step the fine-tuned encoder still equals the pre-trained one (new heads start fresh)
    result = _run({"objectives.weights": {"cls": 1.0, "mlm": 1.0}, "objectives.alpha": 0.5, "train.max_steps": 1,
                   "train.lr": 1e-12, "train.seed": 4, "train.init_from": template}, tmp_path / "ft")
    pre, ft = load_model(pretrained / "seed4" / "model"), load_model(result.model_dir)
    pre_w, ft_w = pre.state_dict(), ft.state_dict()
    shared = [k for k in pre_w if k in ft_w]
    assert shared and set(ft_w) - set(pre_w)  # the cls head is new
    for k in shared:
        torch.testing.assert_close(ft_w[k], pre_w[k], atol=1e-6, rtol=0)
    assert ft.config.cuisine_head and not pre.config.cuisine_head


def test_init_from_argument_wins_and_missing_model_is_a_clear_error(pretrained, tmp_path):
    over = {"objectives.weights": {"mlm": 1.0}, "train.max_steps": 1, "train.seed": 7,
            "train.init_from": str(pretrained / "seed{seed}" / "model")}  # seed7 was never trained
    with pytest.raises(RecipesetError, match=r"train.init_from: .*seed7.* is not a model directory"):
        _run(over, tmp_path / "missing")
    _run(over, tmp_path / "explicit", init_from=str(pretrained / "seed4" / "model"))  # the argument wins
