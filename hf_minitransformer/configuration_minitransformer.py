"""MiniTransformer model configuration."""

import dataclasses
import math
from typing import Literal, get_args, get_origin

from huggingface_hub.dataclasses import strict
from huggingface_hub.errors import StrictDataclassFieldValidationError
from transformers import PreTrainedConfig
from transformers.modeling_rope_utils import RopeParameters


# `rope_parameters["rope_type"]` values: those transformers' Llama implements (modeling_rope_utils), with its
# `dynamic_rope_update` for the ones that recompute frequencies as sequences grow.
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")
# Largest value of any size field: far beyond any real model, small enough that no table of the config's sizes
# (e.g. 10**12 sinusoidal positions) is attempted before an error.
MAX_SIZE = 2**24


def value_errors(cls):
    """Reports a field of the wrong type as a ValueError naming field and value, as every other bad value is.

    @strict type-checks each field when it is set, raising its own StrictDataclassFieldValidationError, which is not
    a ValueError; this wraps that check (applied outside @strict, so it sees its error). A choice (a `Literal` field)
    outside its values gets the list of them.
    """
    strict_setattr = cls.__setattr__
    choices = {field.name: get_args(field.type) for field in dataclasses.fields(cls)
               if get_origin(field.type) is Literal}

    def __setattr__(self, name, value):
        try:
            strict_setattr(self, name, value)
        except StrictDataclassFieldValidationError as error:
            if name in choices:
                allowed = ", ".join(map(repr, choices[name]))
                raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}.") from error
            raise ValueError(f"`{name}`: {error.__cause__}") from error

    cls.__setattr__ = __setattr__
    return cls


@value_errors
@strict(accept_kwargs=True)
class MiniTransformerConfig(PreTrainedConfig):
    r"""
    Configuration of a [`MiniTransformerModel`]: the Transformer of Vaswani et al. (2017), "Attention Is All You
    Need", as the source document describes it. The defaults are the paper's base model, equation for equation:
    sinusoidal positions added to scaled embeddings, post-LN residual blocks, ReLU feed-forward, multi-head scaled
    dot-product attention with an output projection.

    Modern variants are values of single fields, never separate classes:
    `position_embedding_type` ("sinusoidal" | "learned" | "rotary"), `layer_norm_position` ("post" | "pre"),
    `hidden_act` ("relu" | "gelu" | "gelu_new" | "silu") and `is_decoder` (bidirectional or causal self-attention).

    ```python
    >>> from hf_minitransformer import MiniTransformerConfig, MiniTransformerModel
    >>> config = MiniTransformerConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4)
    >>> model = MiniTransformerModel(config)
    ```"""

    model_type = "minitransformer"
    keys_to_ignore_at_inference = ["cache"]
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.feed_forward.fc1": "colwise",
        "layers.*.feed_forward.fc2": "rowwise",
    }

    # Sizes: Vaswani et al. Table 3, base model (d_model 512, h 8, d_ff 2048, N 6).
    vocab_size: int = 32000  # number of token ids the embedding table holds
    hidden_size: int = 512  # d_model
    num_hidden_layers: int = 6  # N, the depth of the stack (of the encoder, in an encoder-decoder model)
    # Depth of the decoder stack of MiniTransformerForSeq2SeqLM (None: num_hidden_layers). BART's name for it, which
    # transformers' generation reads to size the decoder's KV cache.
    decoder_layers: int | None = None
    num_attention_heads: int = 8  # h; each head has d_k = d_v = hidden_size / h
    intermediate_size: int = 2048  # d_ff, the inner size of the position-wise feed-forward
    max_position_embeddings: int = 512  # longest sequence for "sinusoidal" and "learned" positions
    # Architecture choices.
    # FFN(x) = act(x W_1 + b_1) W_2 + b_2; the paper uses ReLU
    hidden_act: Literal["relu", "gelu", "gelu_new", "silu"] = "relu"
    # "sinusoidal" (paper §3.5) | "learned" | "rotary" (RoFormer)
    position_embedding_type: Literal["sinusoidal", "learned", "rotary"] = "sinusoidal"
    # "post": LayerNorm(x + Sublayer(x)), the paper | "pre": x + Sublayer(LayerNorm(x)) (Xiong et al., 2020)
    layer_norm_position: Literal["post", "pre"] = "post"
    is_decoder: bool = False  # False: bidirectional self-attention (encoder); True: causal self-attention
    # True for MiniTransformerForSeq2SeqLM (it sets it): an encoder stack, then a decoder stack whose layers add
    # cross-attention over the encoder output (paper §3.1, Figure 1).
    is_encoder_decoder: bool = False
    scale_embeddings: bool = True  # multiply token embeddings by sqrt(d_model) (paper §3.4)
    attention_bias: bool = False  # the paper's Q = X W_Q, K = X W_K, V = X W_V, W_O have no bias
    # Rotary settings, used when position_embedding_type="rotary": rope_theta, and a rope_type of ROPE_TYPES with its
    # scaling parameters (transformers' format, e.g. {"rope_type": "linear", "factor": 2.0}).
    rope_parameters: RopeParameters | dict | None = None
    # BERT's additions, off in the paper's model (scripts/convert.py sets them for BERT checkpoints).
    type_vocab_size: int = 0  # number of token types (segments) with an embedding added to the input; 0: none
    embedding_layer_norm: bool = False  # LayerNorm over embeddings + positions (+ token types), before dropout
    masked_lm_transform: bool = False  # MaskedLM head: LayerNorm(act(Linear(h))) before the vocabulary projection
    # Regularisation and numerics.
    hidden_dropout_prob: float | int = 0.1  # P_drop on embeddings + positions and each sublayer's output (paper §5.4)
    attention_dropout: float | int = 0.0  # dropout on attention probabilities; the paper uses none
    layer_norm_eps: float | int = 1e-5  # epsilon of every LayerNorm (the paper does not give one; torch's default)
    initializer_range: float | int = 0.02  # std of the normal init of Linear and Embedding weights
    # Heads and generation.
    classifier_pooling: Literal["mean", "first", "last"] = "mean"  # sequence classification pools this non-pad token
    classifier_dropout: float | int | None = None  # dropout before classifier heads; None means hidden_dropout_prob
    use_cache: bool = True  # return a KV cache from causal forward passes (used by generate)
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    decoder_start_token_id: int | None = None  # first decoder input of a seq2seq model; None: bos_token_id
    # Paper §3.4: the output projection shares the embedding matrix; in an encoder-decoder model the source and target
    # embeddings share it too (False: each is a matrix of its own).
    tie_word_embeddings: bool = True
    # What the language-model heads project when `labels` are given (without labels, always every position). Same loss
    # and gradients either way: "all" (batch, seq, vocab) logits | "labelled": only the positions the loss scores,
    # (labelled, vocab), as ModernBERT's `sparse_prediction` | "none": the loss is fused with the projection chunk by
    # chunk and `logits` is None, so no (tokens, vocab) tensor is ever held. A choice of the run, like the attention
    # implementation: never written to config.json, so a saved or published model always returns its logits.
    logits_with_loss: Literal["all", "labelled", "none"] = "all"

    def __post_init__(self, **kwargs):
        # Checked here rather than in `validate_architecture`, which @strict wraps in a non-ValueError: users catch
        # ValueError, and this runs both for `MiniTransformerConfig(...)` and for `from_pretrained` of a config.json.
        self._check_values()
        if self.decoder_layers is None:
            self.decoder_layers = self.num_hidden_layers
        if self.decoder_start_token_id is None:
            self.decoder_start_token_id = self.bos_token_id
        super().__post_init__(**kwargs)  # standardises `rope_parameters`
        self._check_rope_parameters()

    def to_dict(self) -> dict:
        output = super().to_dict()
        output.pop("logits_with_loss", None)  # a training-time choice (see the field), not part of the model
        return output

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def _check_values(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "decoder_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings"):
            value = getattr(self, name)
            if value is None and name == "decoder_layers":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_SIZE:
                raise ValueError(f"`{name}` must be a positive integer no larger than {MAX_SIZE:,}, got {value!r}.")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"`pad_token_id` must be a token id in [0, vocab_size={self.vocab_size}) or None, "
                f"got {self.pad_token_id!r}."
            )
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` "
                f"({self.num_attention_heads})."
            )
        if self.position_embedding_type == "rotary" and self.head_dim % 2 != 0:
            raise ValueError(
                f"Rotary positions need an even head size, got hidden_size / num_attention_heads = {self.head_dim}."
            )
        for field in dataclasses.fields(self):  # Infinity and NaN are valid JSON numbers to Python, not sizes
            value = getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"`{field.name}` must be a finite number, got {value!r}.")
        for name in ("bos_token_id", "decoder_start_token_id", "eos_token_id"):
            value = getattr(self, name)
            for token_id in value if isinstance(value, list) else [value]:
                if token_id is not None and not 0 <= token_id < self.vocab_size:
                    raise ValueError(f"`{name}` must be a token id in [0, vocab_size={self.vocab_size}) or None, "
                                     f"got {value!r}.")
        for name in ("hidden_dropout_prob", "attention_dropout", "classifier_dropout"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must be a probability between 0 and 1, got {value!r}.")
        type_vocab_size = self.type_vocab_size
        if isinstance(type_vocab_size, bool) or not isinstance(type_vocab_size, int) or type_vocab_size < 0:
            raise ValueError(f"`type_vocab_size` must be a non-negative integer, got {self.type_vocab_size!r}.")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"`layer_norm_eps` must be positive, got {self.layer_norm_eps!r}.")
        if not self.initializer_range >= 0:
            raise ValueError(f"`initializer_range` must be non-negative, got {self.initializer_range!r}.")

    def _check_rope_parameters(self):
        rope_type = self.rope_parameters.get("rope_type", "default")
        if rope_type not in ROPE_TYPES:
            raise ValueError(
                f"`rope_parameters['rope_type']` must be one of {', '.join(map(repr, ROPE_TYPES))}, got {rope_type!r}."
            )
        for key, value in self.rope_parameters.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"`rope_parameters['{key}']` must be a finite number, got {value!r}.")
        try:  # transformers' own checks of each type's parameters, which raise KeyError for a missing one
            self.validate_rope()
        except (KeyError, TypeError) as error:
            raise ValueError(f"`rope_parameters` {self.rope_parameters}: {error}") from error


__all__ = ["MiniTransformerConfig"]
