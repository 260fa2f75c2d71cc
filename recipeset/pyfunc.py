"""A trained model as an MLflow pyfunc model: ``mlflow.pyfunc.load_model``, ``mlflow models serve``, the Registry.

A tracked run logs its checkpoint directory twice: as plain artifacts (``runs:/<id>/model``, read by
``recipeset.load_model``) and as the pyfunc model ``runs:/<id>/pyfunc`` (:meth:`recipeset.tracking.Tracker.log_pyfunc`),
which :func:`save_pyfunc` writes. It is an MLflow "model from code": the model is the file
``resources/pyfunc_model.py`` (copied into the MLflow model, run on load), which builds a :class:`RecipeCompleter`;
its ``load_context`` reads the checkpoint directory stored as the artifact ``model_dir`` with
:func:`recipeset.models.io.load_model`. Nothing is pickled: no ``python_model.pkl``, the weights are the checkpoint's
``weights.pt``, read with ``torch.load(weights_only=True)``.

``predict`` takes a DataFrame with a column ``ingredients`` — a list of names, or one comma-separated string, per
row — and the params ``top`` (10), ``generate`` (False) and ``max_new`` (10)::

    model = mlflow.pyfunc.load_model("runs:/<id>/pyfunc")          # or "models:/NAME/1"
    model.predict(pd.DataFrame({"ingredients": [["tomato", "basil"]]}), params={"top": 3})
    #   completion: ['garlic', 'onion', 'olive_oil']  probability: [0.31, 0.12, 0.08]   (model.top_completions)
    model.predict(pd.DataFrame({"ingredients": ["tomato, basil"]}), params={"generate": True})
    #   completion: ['garlic', 'olive_oil']                                              (model.complete, greedy)

This module imports mlflow at the top (the class derives from ``PythonModel``): only the tracker imports it (inside a
function), and the model file MLflow runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel

import recipeset
from recipeset.data.table import parse_ingredient_list
from recipeset.data.vocab import Vocabulary
from recipeset.errors import RecipesetError
from recipeset.models.base import RecipeModel
from recipeset.models.io import VOCAB_FILE, load_model

MODEL_CODE = Path(__file__).parent / "resources" / "pyfunc_model.py"  # the "model from code" file
MODEL_DIR_ARTIFACT = "model_dir"  # the checkpoint directory, inside the MLflow model's artifacts/
INPUT_COLUMN = "ingredients"
PARAMS: dict[str, Any] = {"top": 10, "generate": False, "max_new": 10}  # predict's params and their defaults


class RecipeCompleter(PythonModel):
    """The pyfunc model: a recipeset checkpoint directory (the artifact ``model_dir``) behind ``predict``."""

    def load_context(self, context) -> None:
        self.model = load_model(context.artifacts[MODEL_DIR_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException

        try:
            return predict_frame(self.model, model_input, params)
        except RecipesetError as e:  # an MLflow error: the scoring server answers 400 with this line, no traceback
            raise MlflowException.invalid_parameter_value(str(e)) from None


def predict_frame(model: RecipeModel, frame: pd.DataFrame, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """:class:`RecipeCompleter`'s answer for ``frame`` (a column ``ingredients``): one row per input row, the column
    ``completion`` (names) and, when ranking (``generate`` false), ``probability`` (the same length)."""
    p = {**PARAMS, **{k: v for k, v in (params or {}).items() if v is not None}}
    unknown = sorted(set(p) - set(PARAMS))
    if unknown:
        raise RecipesetError(f"unknown param(s) {unknown}; expected {sorted(PARAMS)}")
    if not isinstance(frame, pd.DataFrame) or INPUT_COLUMN not in frame.columns:
        raise RecipesetError(f"expected a DataFrame with a column '{INPUT_COLUMN}' (a list of ingredient names or "
                             "a comma-separated string per row)")
    queries = [query_names(value) for value in frame[INPUT_COLUMN]]
    if bool(p["generate"]):
        return pd.DataFrame({"completion": model.complete(queries, max_new=_positive(p, "max_new"))})
    ranked = model.top_completions(queries, top=_positive(p, "top"))
    return pd.DataFrame({"completion": [[name for name, _ in row] for row in ranked],
                         "probability": [[prob for _, prob in row] for row in ranked]})


def query_names(value: Any) -> list[str]:
    """One row's ingredients: a list (or array) of names, or a comma-separated string."""
    if isinstance(value, str):
        return parse_ingredient_list(value)
    if isinstance(value, list | tuple | np.ndarray) and all(isinstance(v, str) for v in value) and len(value):
        return [str(v) for v in value]
    raise RecipesetError(f"'{INPUT_COLUMN}': expected a list of ingredient names or a comma-separated string, "
                         f"got {value!r}")


def _positive(params: Mapping[str, Any], name: str) -> int:
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise RecipesetError(f"param '{name}' must be a positive integer, got {value!r}")
    return int(value)


def signature():
    """The pyfunc's signature: ``ingredients`` (a list or a string: any type), outputs ``completion`` and
    ``probability`` (absent when generating), params ``top``, ``generate``, ``max_new``."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

    types = {int: DataType.long, bool: DataType.boolean}
    return ModelSignature(
        inputs=Schema([ColSpec(AnyType(), INPUT_COLUMN)]),
        outputs=Schema([ColSpec(Array(DataType.string), "completion"),
                        ColSpec(Array(DataType.double), "probability", required=False)]),
        params=ParamSchema([ParamSpec(name, types[type(default)], default) for name, default in PARAMS.items()]))


def input_example(vocab: Vocabulary) -> pd.DataFrame:
    """A request a model with this vocabulary answers: its two most frequent ingredients, as a list and as a
    string."""
    names = vocab.ingredients[:2]
    return pd.DataFrame({INPUT_COLUMN: [names, ", ".join(names)]})


def pip_requirements() -> list[str]:
    """What serving needs, pinned to this environment: recipeset (its code), torch (the weights) and mlflow.
    Given explicitly, so MLflow does not infer them (which loads the model in a subprocess) or resolve anything
    over the network."""
    return [f"recipeset=={recipeset.__version__}", f"torch=={torch.__version__.split('+')[0]}",
            f"mlflow=={mlflow.__version__}"]


def save_pyfunc(model_dir: str | os.PathLike, path: str | os.PathLike, mlflow_model=None) -> Path:
    """Write the checkpoint directory ``model_dir`` as an MLflow pyfunc model at ``path`` (which must not exist);
    ``mlflow_model``: the ``mlflow.models.Model`` to fill (the tracker's, bound to a logged model)."""
    from recipeset.tracking import mlflow_env

    vocab = Vocabulary.load(Path(model_dir) / VOCAB_FILE)
    # no progress bar for copying the local directory; requirements are given, so nothing to detect in the cwd
    with mlflow_env({"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_UV_AUTO_DETECT": "false"},
                    override=False):
        mlflow.pyfunc.save_model(path, python_model=str(MODEL_CODE),
                                 artifacts={MODEL_DIR_ARTIFACT: str(model_dir)}, signature=signature(),
                                 input_example=input_example(vocab), pip_requirements=pip_requirements(),
                                 mlflow_model=mlflow_model)
    return Path(path)
