"""hf_minitransformer: the classic Transformer as a native Hugging Face transformers model.

Importing the package registers the config and every head with the Auto classes, and marks them for remote code, so
that `save_pretrained` writes `auto_map` plus the configuration and modeling files beside the weights.
"""

import transformers

from .configuration_minitransformer import MiniTransformerConfig
from .modeling_minitransformer import *  # noqa: F403  (every model class: the names of its __all__)
from .modeling_minitransformer import AUTO_CLASS_NAMES, MiniTransformerSeq2SeqModel
from .modeling_minitransformer import __all__ as _MODEL_NAMES


__version__ = "0.1.0"

transformers.AutoConfig.register(MiniTransformerConfig.model_type, MiniTransformerConfig, exist_ok=True)
MiniTransformerConfig.register_for_auto_class()
for _auto_name, _class_name in AUTO_CLASS_NAMES.items():
    _model_class = globals()[_class_name]
    getattr(transformers, _auto_name).register(MiniTransformerConfig, _model_class, exist_ok=True)
    _model_class.register_for_auto_class(_auto_name)
# Not a registration of its own: AutoModel hands an encoder-decoder config over to it (MiniTransformerModel).
MiniTransformerSeq2SeqModel.register_for_auto_class("AutoModel")

__all__ = ["MiniTransformerConfig", *_MODEL_NAMES]
