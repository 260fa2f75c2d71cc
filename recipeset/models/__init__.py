"""Models: a causal decoder, a Set Transformer and Deep Sets, with safe save/load.

Each model class registers itself in :data:`recipeset.registry.MODELS` (re-exported here as ``MODELS``) under its
``model_type``, the name used by the CLI, config files and MLflow params; its ``config_class`` is the dataclass
it is built from, as ``cls(config, vocab, input_features=None)``.
"""

from recipeset.models.base import ModelOutput, RecipeModel
from recipeset.models.decoder import CausalDecoder, DecoderConfig
from recipeset.models.deep_sets import DeepSets, DeepSetsConfig
from recipeset.models.io import load_model, save_model
from recipeset.models.set_transformer import SetTransformer, SetTransformerConfig
from recipeset.registry import MODELS

__all__ = ["MODELS", "ModelOutput", "RecipeModel", "CausalDecoder", "DecoderConfig", "SetTransformer",
           "SetTransformerConfig", "DeepSets", "DeepSetsConfig", "load_model", "save_model"]
