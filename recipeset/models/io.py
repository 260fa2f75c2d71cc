"""Save and load models as plain checkpoint directories: never arbitrary pickle.

A checkpoint directory holds::

    config.json   {"format": "recipeset.model/1", "model_type": "decoder", "config": {...dataclass fields...}}
    vocab.json    the Vocabulary
    weights.pt    the state dict (``torch.save``), read back with ``torch.load(weights_only=True)``

``weights_only=True`` only rebuilds tensors and plain containers; a file that would run code on load (a
crafted pickle) is refused with a RecipesetError (:func:`read_weights`).
"""

from __future__ import annotations

import json
import os
import pickle
import re
from dataclasses import asdict, fields
from pathlib import Path

import torch

from recipeset.data.vocab import Vocabulary
from recipeset.errors import RecipesetError
from recipeset.io_utils import atomic_write_dir, atomic_write_text, torch_save
from recipeset.models.base import RecipeModel
from recipeset.registry import MODELS

FORMAT = "recipeset.model/1"
CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE = "config.json", "vocab.json", "weights.pt"
REMOTE_PREFIXES = ("runs:/", "models:/")  # refused here: recipeset.load_model (recipeset.runs) resolves them


def save_model(model: RecipeModel, path: str | os.PathLike, extra_files: dict[str, str] | None = None) -> Path:
    """Write ``model`` to the checkpoint directory ``path`` atomically (a crash leaves the old one or the new
    one, never a mixture). ``extra_files`` maps plain file names to text written alongside (e.g. the resolved
    run config); they may not replace the checkpoint's own files. Returns the path."""
    path = Path(path)
    extra_files = dict(extra_files or {})
    for name in extra_files:
        if name in (CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE) or Path(name).name != name or name.startswith("."):
            raise RecipesetError(f"save_model: extra file name {name!r} must be a plain name other than "
                                 f"{CONFIG_FILE}, {VOCAB_FILE}, {WEIGHTS_FILE}")
    meta = {"format": FORMAT, "model_type": model.model_type, "config": asdict(model.config)}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}

    def fill(tmp: Path) -> None:
        atomic_write_text(tmp / CONFIG_FILE, json.dumps(meta, indent=1))
        model.vocab.save(tmp / VOCAB_FILE)
        torch_save(state, tmp / WEIGHTS_FILE)
        for name, text in extra_files.items():
            atomic_write_text(tmp / name, text)

    atomic_write_dir(path, fill)
    return path


def _read_config(path: Path) -> tuple[type[RecipeModel], object]:
    file = path / CONFIG_FILE
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipesetError(f"{file}: missing; is {path} a model directory written by recipeset?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecipesetError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise RecipesetError(f"{file}: not a recipeset model config (needs 'model_type' and 'config')")
    model_type = meta.get("model_type")
    if model_type not in MODELS:
        raise RecipesetError(f"{file}: unknown model_type {model_type!r}; expected one of {sorted(MODELS.names())}")
    config_cls = MODELS.get(model_type).config_class
    known = {f.name for f in fields(config_cls)}
    unknown = sorted(set(meta["config"]) - known)
    if unknown:
        raise RecipesetError(f"{file}: unknown config key(s) {unknown} for {model_type}; written by a newer "
                             "recipeset?")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()}  # JSON lists: tuples
    return MODELS.get(model_type), config_cls(**values)


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def read_weights(file: Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A weights file's state dict, read with ``torch.load(weights_only=True)``, which rebuilds tensors and plain
    containers only. A file that holds other Python objects (a pickle that could run code when loaded) or is not
    a torch file at all is refused with a one-line RecipesetError naming the file and why; torch's own message,
    which suggests loading the file unsafely, is never passed on."""
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise RecipesetError(f"{file}: missing; the model directory is incomplete") from None
    except pickle.UnpicklingError as e:
        found = _GLOBAL.search(str(e))
        if found:
            raise RecipesetError(f"{file}: refused to load: it contains Python objects ({found.group(1)}) that "
                                 "could run code when loaded, not only tensors; recipeset loads plain tensor files "
                                 "only (as save_model writes them)") from None
        raise RecipesetError(f"{file}: refused to load: not a plain tensor file (its pickle holds something other "
                             "than tensors, or it is corrupt)") from None
    except Exception:  # RuntimeError/EOFError/...: truncated, corrupt or not a torch file
        raise RecipesetError(f"{file}: refused to load: not a readable tensor file (truncated, corrupt or not "
                             "written by torch.save)") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RecipesetError(f"{file}: refused to load: not a state dict of tensors")
    return state


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> RecipeModel:
    """Rebuild a model from a local checkpoint directory, in eval mode.

    MLflow ``runs:/…``/``models:/…`` URIs are resolved above the model layer: ``recipeset.load_model``
    downloads them, then calls this. Raises RecipesetError for such a URI, a missing directory/file, an unknown
    model type or config key, weights that do not fit the config, or a weights file that is not a plain tensor
    state dict (it is never executed).
    """
    if isinstance(path, str) and path.startswith(REMOTE_PREFIXES):
        raise RecipesetError(f"{path}: an MLflow URI; recipeset.models.io.load_model reads local directories only "
                             "— use recipeset.load_model, which downloads it first")
    path = Path(path)
    if not path.is_dir():
        raise RecipesetError(f"{path}: model directory not found")
    cls, config = _read_config(path)
    if not (path / VOCAB_FILE).is_file():
        raise RecipesetError(f"{path / VOCAB_FILE}: missing; the model directory is incomplete")
    vocab = Vocabulary.load(path / VOCAB_FILE)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise RecipesetError(f"{weights}: missing; the model directory is incomplete")
    state = read_weights(weights, map_location)
    model = cls(config, vocab)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise RecipesetError(f"{weights}: weights do not fit {CONFIG_FILE} "
                             f"({str(e).splitlines()[0][:200]})") from None
    return model.to(map_location).eval()
