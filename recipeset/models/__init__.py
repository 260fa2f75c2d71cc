"""Models: a causal decoder, a Set Transformer and Deep Sets, with safe save/load.

``MODELS`` maps the config name of each model (CLI, TOML, MLflow params) to its class; each class has a
``@dataclass`` config (``CONFIGS``) and is built as ``cls(config, vocab, input_features=None)``.
"""

from recipeset.models.base import ModelOutput, RecipeModel
from recipeset.models.decoder import CausalDecoder, DecoderConfig
from recipeset.models.deep_sets import DeepSets, DeepSetsConfig
from recipeset.models.io import load_model, save_model
from recipeset.models.set_transformer import SetTransformer, SetTransformerConfig

MODELS = {"decoder": CausalDecoder, "set-transformer": SetTransformer, "deep-sets": DeepSets}
CONFIGS = {"decoder": DecoderConfig, "set-transformer": SetTransformerConfig, "deep-sets": DeepSetsConfig}

__all__ = ["MODELS", "CONFIGS", "ModelOutput", "RecipeModel", "CausalDecoder", "DecoderConfig", "SetTransformer",
           "SetTransformerConfig", "DeepSets", "DeepSetsConfig", "load_model", "save_model"]
