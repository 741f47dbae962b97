"""MiniTransformer: the Transformer of "Attention Is All You Need" (Vaswani et al., 2017) as a transformers model.

Data flow of the default configuration (the source document, equation for equation):

    tokens -> X = Embedding(tokens) * sqrt(d_model) -> X + PE (sinusoidal) -> dropout
           -> N x [ Z = LayerNorm(X + MultiHead(X))  ;  X = LayerNorm(Z + FFN(Z)) ]
    MultiHead(X) = Concat(head_1 .. head_h) W_O,   head_i = softmax(Q_i K_i^T / sqrt(d_k)) V_i,
    Q_i = X W_Q^i,  K_i = X W_K^i,  V_i = X W_V^i,  FFN(Z) = ReLU(Z W_1 + b_1) W_2 + b_2

Variants (pre-LN, GELU, learned or rotary positions, causal self-attention) are values of config fields. The
encoder-decoder model of the paper's Figure 1 (MiniTransformerForSeq2SeqLM) stacks the same layers twice: the decoder's
self-attention is masked, and each decoder layer adds cross-attention over the encoder output.
"""

import copy
import math
from collections.abc import Callable

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.generation import CompileConfig, GenerationMixin
from transformers.masking_utils import (
    create_bidirectional_mask,
    create_causal_mask,
    find_packed_sequence_indices,
    packed_sequence_mask_function,
)
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    CausalLMOutputWithPast,
    MaskedLMOutput,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel, slice_logits_to_keep
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple, logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_minitransformer import MiniTransformerConfig
from .loss_minitransformer import lm_logits_and_loss
from .pipelines_minitransformer import CUSTOM_PIPELINES  # imported here, `save_pretrained` copies the file too


logger = logging.get_logger(__name__)


def sinusoidal_position_encoding(num_positions: int, dim: int) -> torch.Tensor:
    """Vaswani et al. §3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d))."""
    position = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)  # (positions, 1)
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))  # (ceil(dim/2),)
    angles = position * inv_freq  # (positions, ceil(dim/2))
    encoding = torch.zeros(num_positions, dim, dtype=torch.float64)
    encoding[:, 0::2] = torch.sin(angles)
    encoding[:, 1::2] = torch.cos(angles[:, : dim // 2])
    # Built in float64 so that every dtype the model is cast to gets the correctly rounded table.
    return encoding.to(torch.get_default_dtype())


def check_in_range(values: torch.Tensor, limit: int, message: Callable[[int | str], str]):
    """ValueError `message(bad value)` if any of `values` is outside [0, limit), read where it costs no wait.

    Values on the CPU are read on the host. Reading them from an accelerator would stall the host on every forward,
    every decoding step included, so there the check is an asynchronous device assert with the same message (which
    the next synchronising call raises), and under torch.compile there is none.
    """
    if torch.compiler.is_compiling() or values.numel() == 0:
        return
    if values.device.type != "cpu":
        torch._assert_async(((values >= 0) & (values < limit)).all(), message("out of range"))
        return
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= limit:
        raise ValueError(message(low if low < 0 else high))


class MiniTransformerEmbeddings(nn.Module):
    """Token embeddings scaled by sqrt(d_model), plus absolute positions ("sinusoidal" or "learned"), then dropout."""

    def __init__(self, config: MiniTransformerConfig):
        super().__init__()
        self.config = config
        self.token_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        # Vaswani et al. §3.4: "In the embedding layers, we multiply those weights by sqrt(d_model)."
        self.embedding_scale = math.sqrt(config.hidden_size) if config.scale_embeddings else 1.0
        if config.position_embedding_type == "sinusoidal":
            # Non-persistent: a pure function of the config, so it is rebuilt (in `_init_weights`), never saved.
            table = sinusoidal_position_encoding(config.max_position_embeddings, config.hidden_size)
            self.register_buffer("position_encoding", table, persistent=False)
        elif config.position_embedding_type == "learned":
            self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        # BERT (Devlin et al., 2019): segment embeddings and a LayerNorm over the sum. None in the paper's model.
        self.token_type_embeddings = self.layer_norm = None
        if config.type_vocab_size:
            self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        if config.embedding_layer_norm:
            self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.LongTensor,
        token_type_ids: torch.LongTensor | None = None,
    ) -> torch.Tensor:
        """`inputs_embeds` are raw token embeddings (batch, seq, hidden); `position_ids` is (batch or 1, seq);
        `token_type_ids` (batch, seq) segment ids, all 0 when not given (with `config.type_vocab_size` only)."""
        hidden_states = inputs_embeds * self.embedding_scale
        if self.config.position_embedding_type == "sinusoidal":
            hidden_states = hidden_states + self.position_encoding[position_ids].to(hidden_states.dtype)
        elif self.config.position_embedding_type == "learned":
            hidden_states = hidden_states + self.position_embeddings(position_ids)
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                hidden_states = hidden_states + self.token_type_embeddings.weight[0]
            else:
                hidden_states = hidden_states + self.token_type_embeddings(token_type_ids)
        if self.layer_norm is not None:
            hidden_states = self.layer_norm(hidden_states)
        return self.dropout(hidden_states)


class MiniTransformerRotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al., 2021): cos/sin tables rotating query and key pairs by position."""

    def __init__(self, config: MiniTransformerConfig):
        super().__init__()
        self.config = config
        # What `dynamic_rope_update` reads: "dynamic" recomputes the frequencies past the original length.
        self.max_seq_len_cached = self.original_max_seq_len = config.max_position_embeddings
        self.rope_type = config.rope_parameters["rope_type"]
        rope_init_fn = self.compute_default_rope_parameters
        if self.rope_type != "default":
            rope_init_fn = ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = rope_init_fn(config)
        # Non-persistent; the names are the ones transformers' base `_init_weights` rebuilds after loading.
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config: MiniTransformerConfig, **kwargs) -> tuple[torch.Tensor, float]:
        base = config.rope_parameters["rope_theta"]
        dim = config.head_dim
        # theta_j = base^(-2j / d_k); built in float64, stored in the default dtype (float32 unless asked otherwise).
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))  # (head_dim / 2,)
        return inv_freq.to(torch.get_default_dtype()), 1.0

    @torch.no_grad()
    @dynamic_rope_update  # "dynamic" and "longrope" choose their frequencies by the sequence length, as in Llama
    def forward(self, x: torch.Tensor, position_ids: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Angles in at least float32: positions times frequencies lose too many digits in half precision.
        dtype = torch.promote_types(self.inv_freq.dtype, torch.float32)
        freqs = position_ids[..., None].to(dtype) * self.inv_freq.to(dtype)  # (batch or 1, seq, head_dim / 2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (batch or 1, seq, head_dim)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(x.dtype), sin.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin):
    """Rotate (batch, heads, seq, head_dim) queries and keys by the (batch, seq, head_dim) angle tables."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Unpack[TransformersKwargs],
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q K^T / sqrt(d_k) + mask) V, written out: the reference every other backend must match."""
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling  # (batch, heads, q_len, kv_len)
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask  # additive: 0 where allowed, dtype min where masked
    # Softmax in at least float32 under bf16/fp16: the row sums are what half precision gets wrong.
    softmax_dtype = torch.promote_types(attn_weights.dtype, torch.float32)
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=softmax_dtype).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value)  # (batch, heads, q_len, head_dim)
    attn_output = attn_output.transpose(1, 2).contiguous()  # (batch, q_len, heads, head_dim)
    return attn_output, attn_weights


class MiniTransformerAttention(nn.Module):
    """Multi-head scaled dot-product attention with output projection W_O (Vaswani et al. §3.2.2).

    Self-attention, or, with `is_cross_attention`, the decoder's encoder-decoder attention (§3.2.3): queries from the
    decoder, keys and values from the encoder output.
    """

    # Notation: batch | seq: query length | kv_len: cached + new key length (source length for cross-attention)
    # | heads: h | head_dim: d_k = d_model / h

    def __init__(self, config: MiniTransformerConfig, layer_idx: int, is_cross_attention: bool = False):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5  # 1 / sqrt(d_k)
        self.attention_dropout = config.attention_dropout
        self.is_cross_attention = is_cross_attention
        self.is_causal = config.is_decoder and not is_cross_attention
        # The h per-head W_Q^i (d_model x d_k) are stored side by side as one d_model x d_model matrix, and so on.
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.attention_bias)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.attention_bias)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.attention_bias)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.attention_bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]  # (batch, seq)
        hidden_shape = (*input_shape, -1, self.head_dim)  # (batch, seq, heads, head_dim)

        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (batch, heads, seq, head_dim)
        if self.is_cross_attention:
            key_states, value_states = self.encoder_keys_values(encoder_hidden_states, cache)
        else:
            key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (batch, heads, seq, head_dim)
            value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (batch, heads, seq, hd)
            if position_embeddings is not None:
                cos, sin = position_embeddings
                query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
            if isinstance(cache, EncoderDecoderCache):
                cache = cache.self_attention_cache
            if cache is not None:
                # (batch, heads, kv_len, head_dim): this step's keys and values appended to the cached ones
                key_states, value_states = cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()  # Concat(heads): (batch, seq, hidden)
        attn_output = self.o_proj(attn_output)
        return attn_output, attn_weights

    def encoder_keys_values(
        self, encoder_hidden_states: torch.Tensor, cache: EncoderDecoderCache | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K = encoder output W_K, V = encoder output W_V: computed at the first decoding step, then read back."""
        if cache is not None and cache.is_updated.get(self.layer_idx):
            layer = cache.cross_attention_cache.layers[self.layer_idx]
            return layer.keys, layer.values
        kv_shape = (*encoder_hidden_states.shape[:-1], -1, self.head_dim)  # (batch, source, heads, head_dim)
        key_states = self.k_proj(encoder_hidden_states).view(kv_shape).transpose(1, 2)  # (batch, heads, source, hd)
        value_states = self.v_proj(encoder_hidden_states).view(kv_shape).transpose(1, 2)  # (batch, heads, source, hd)
        if cache is not None:
            key_states, value_states = cache.cross_attention_cache.update(key_states, value_states, self.layer_idx)
            cache.is_updated[self.layer_idx] = True
        return key_states, value_states


class MiniTransformerFeedForward(nn.Module):
    """Position-wise feed-forward: FFN(x) = act(x W_1 + b_1) W_2 + b_2 (Vaswani et al. §3.3)."""

    def __init__(self, config: MiniTransformerConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act_fn = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act_fn(self.fc1(hidden_states)))


class MiniTransformerLayer(GradientCheckpointingLayer):
    """One block: self-attention then feed-forward, each wrapped in dropout, a residual add and a LayerNorm.

    In the decoder of an encoder-decoder model (`config.is_decoder` and `config.is_encoder_decoder`), cross-attention
    over the encoder output sits between the two, with its own residual and LayerNorm (paper §3.1).
    """

    def __init__(self, config: MiniTransformerConfig, layer_idx: int):
        super().__init__()
        self.pre_norm = config.layer_norm_position == "pre"
        self.self_attn = MiniTransformerAttention(config, layer_idx)
        self.attn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.cross_attn = self.cross_attn_layer_norm = None
        if config.is_decoder and config.is_encoder_decoder:
            self.cross_attn = MiniTransformerAttention(config, layer_idx, is_cross_attention=True)
            self.cross_attn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = MiniTransformerFeedForward(config)
        self.ffn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        # Vaswani et al. §5.4: dropout on each sub-layer's output, before the residual add.
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        if self.pre_norm:
            # Pre-LN (Xiong et al., 2020): x + Sublayer(LayerNorm(x)); the model adds one final LayerNorm.
            attn_output, _ = self.self_attn(
                self.attn_layer_norm(hidden_states), attention_mask, position_embeddings, cache, **kwargs
            )
            hidden_states = hidden_states + self.dropout(attn_output)
            if self.cross_attn is not None:
                attn_output, _ = self.cross_attn(
                    self.cross_attn_layer_norm(hidden_states), encoder_attention_mask, None, cache,
                    encoder_hidden_states=encoder_hidden_states, **kwargs,
                )
                hidden_states = hidden_states + self.dropout(attn_output)
            return hidden_states + self.dropout(self.feed_forward(self.ffn_layer_norm(hidden_states)))

        # Self Attention: Z = LayerNorm(X + MultiHead(X))
        attn_output, _ = self.self_attn(hidden_states, attention_mask, position_embeddings, cache, **kwargs)
        hidden_states = self.attn_layer_norm(hidden_states + self.dropout(attn_output))
        if self.cross_attn is not None:
            # Cross Attention: LayerNorm(Z + MultiHead(Q = Z, K = V = encoder output))
            attn_output, _ = self.cross_attn(
                hidden_states, encoder_attention_mask, None, cache, encoder_hidden_states=encoder_hidden_states,
                **kwargs,
            )
            hidden_states = self.cross_attn_layer_norm(hidden_states + self.dropout(attn_output))
        # Feed Forward: LayerNorm(Z + FFN(Z))
        hidden_states = self.ffn_layer_norm(hidden_states + self.dropout(self.feed_forward(hidden_states)))
        return hidden_states


def checking_guards_once(compiled: Callable) -> Callable:
    """`compiled` for the steps of one `generate`: a step whose inputs match the step before it (the same tensor
    shapes, dtypes and devices, the same cache and other objects, the same flags) runs with dynamo's
    `skip_guard_eval_unsafe`, which checks only the guards that tell its compiled entries apart (every tensor's
    shape, dtype and strides among them) and skips the thousands on the model's modules and settings, which the
    step before checked in full and nothing inside one `generate` changes. Any other step (the first, a chunk of
    another length, a new batch size) is checked in full. With int8 weights: +2-13% tokens/s at batch 1 and 8 in
    three A/Bs (docs/benchmarks.md)."""
    previous = None  # the signature of the last step checked in full; it keeps its objects alive, so ids stay theirs

    def step(*args, **kwargs):
        nonlocal previous
        signature = call_signature(args, kwargs)
        if signature == previous:
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                return compiled(*args, **kwargs)
        previous = None
        output = compiled(*args, **kwargs)
        previous = signature
        return output

    return step


def call_signature(args: tuple, kwargs: dict) -> tuple:
    """What a compiled step's guards depend on outside tensor values: grad mode, each tensor's shape, dtype,
    device and grad flag, every plain value, and the identity of every other object (a cache, encoder outputs)."""

    def describe(value):
        if isinstance(value, torch.Tensor):
            return ("tensor", value.shape, value.dtype, value.device, value.requires_grad)
        if value is None or isinstance(value, (bool, int, float, str)):
            return (type(value), value)
        # By identity: the id decides before the object is compared, and holding the object keeps its id its own.
        return ("object", id(value), value)

    return (
        torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
        tuple(describe(value) for value in args), tuple((key, describe(value)) for key, value in kwargs.items()),
    )


class MiniTransformerPreTrainedModel(PreTrainedModel):
    config: MiniTransformerConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MiniTransformerLayer"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True
    # torch.compile(model.forward, fullgraph=True) traces a whole forward (a static cache's decoding step included)
    # without a graph break: the input checks that read values are left out while compiling.
    _can_compile_fullgraph = True
    _can_record_outputs = {
        "hidden_states": MiniTransformerLayer,
        "attentions": OutputRecorder(MiniTransformerAttention, index=1, layer_name="self_attn"),
        "cross_attentions": OutputRecorder(MiniTransformerAttention, index=1, layer_name="cross_attn"),
    }

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        super()._init_weights(module)
        if isinstance(module, MiniTransformerEmbeddings) and hasattr(module, "position_encoding"):
            # Non-persistent buffers are not in the checkpoint: without this they come back as garbage.
            table = sinusoidal_position_encoding(self.config.max_position_embeddings, self.config.hidden_size)
            init.copy_(module.position_encoding, table)

    def get_compiled_call(self, compile_config: CompileConfig | None) -> Callable:
        """What `generate` runs for each decoding step with a static cache: this model's `__call__` compiled, as
        transformers does, but as a function whose code object is this model's own.

        torch.compile keeps its compiled code per Python code object, and transformers compiles `self.__call__`,
        whose code (`nn.Module.__call__`) every model shares: all models compiled in a process then add to one list,
        and a step of one model first tries the guards of the others' entries. An int8 model compiled beside its
        float32 original decoded 22-34% faster with its own (docs/benchmarks.md).

        `generate` asks for it once per call; what it gets checks dynamo's guards in full only where a step's inputs
        differ from the step before (`checking_guards_once`).
        """
        compile_config = compile_config or self._default_compile_config()
        # The owner: a deep copy of a model copies these attributes, and the copied function would call the original.
        if getattr(self, "_compiled_call_owner", None) != id(self) or self._last_compile_config != compile_config:

            def call(*args, **kwargs):
                return self(*args, **kwargs)

            call.__code__ = call.__code__.replace()  # a new code object: a list of compiled entries of its own
            self._compiled_call = torch.compile(call, **compile_config.to_dict())
            self._last_compile_config, self._compiled_call_owner = compile_config, id(self)
        return checking_guards_once(self._compiled_call)

    def save_pretrained(self, save_directory, *args, **kwargs):
        # transformers writes `auto_map` only for the class being saved; add the other heads, keeping any entry
        # already there (a model loaded from the Hub carries "repo--module.Class" references).
        module = self.__class__.__module__.rsplit(".", 1)[-1]
        if self.config.is_encoder_decoder:
            names = SEQ2SEQ_AUTO_CLASS_NAMES
        else:
            names = {auto: name for auto, name in AUTO_CLASS_NAMES.items() if auto != "AutoModelForSeq2SeqLM"}
        defaults = {auto: f"{module}.{name}" for auto, name in names.items()}
        self.config.auto_map = {**defaults, **(getattr(self.config, "auto_map", None) or {})}
        return super().save_pretrained(save_directory, *args, **kwargs)


class MiniTransformerModel(MiniTransformerPreTrainedModel):
    """The bare stack: embeddings + positions, N layers, and (pre-LN only) a final LayerNorm.

    It is also each half of MiniTransformerForSeq2SeqLM: the encoder, and the decoder whose layers cross-attend to
    `encoder_hidden_states`.
    """

    def __init__(self, config: MiniTransformerConfig):
        super().__init__(config)
        self.embeddings = MiniTransformerEmbeddings(config)
        self.rotary_emb = (
            MiniTransformerRotaryEmbedding(config) if config.position_embedding_type == "rotary" else None
        )
        self.layers = nn.ModuleList(
            [MiniTransformerLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        # Post-LN outputs are already normalised; pre-LN leaves the residual stream un-normalised.
        self.final_layer_norm = None
        if config.layer_norm_position == "pre":
            self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def init_parallel_plans(self):
        super().init_parallel_plans()
        if self.config.is_decoder and self.config.is_encoder_decoder:  # its layers also cross-attend: shard alike
            cross = {key.replace(".self_attn.", ".cross_attn."): style for key, style in self._tp_plan.items()
                     if ".self_attn." in key}
            self._tp_plan.update(cross)

    # transformers maps one AutoModel class per config class: for an encoder-decoder config (a seq2seq checkpoint)
    # `AutoModel` means the bare encoder-decoder, as for BART and Marian, so the two entry points it uses hand over.
    @classmethod
    def from_pretrained(cls, *args, config: MiniTransformerConfig | None = None, **kwargs):
        if cls is MiniTransformerModel and getattr(config, "is_encoder_decoder", False):
            return MiniTransformerSeq2SeqModel.from_pretrained(*args, config=config, **kwargs)
        return super().from_pretrained(*args, config=config, **kwargs)

    @classmethod
    def _from_config(cls, config: MiniTransformerConfig, **kwargs):
        if cls is MiniTransformerModel and config.is_encoder_decoder:
            return MiniTransformerSeq2SeqModel._from_config(config, **kwargs)
        return super()._from_config(config, **kwargs)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.token_embeddings

    def set_input_embeddings(self, value: nn.Embedding):
        self.embeddings.token_embeddings = value

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        r"""
        Args:
            input_ids: (batch, seq) token ids in [0, vocab_size). Give either these or `inputs_embeds`.
            attention_mask: (batch, cached + seq) with 1 for tokens to attend to and 0 for padding, or a prepared
                4D mask (batch, 1, seq, kv_len).
            position_ids: (batch, seq) positions; defaults to cached length + arange(seq).
            cache: a transformers `Cache` of earlier keys and values (causal models only; an `EncoderDecoderCache`
                for the decoder of an encoder-decoder model).
            inputs_embeds: (batch, seq, hidden) raw token embeddings, as `get_input_embeddings()` returns them;
                the sqrt(d_model) scale and the positions are applied here.
            encoder_hidden_states: (batch, source, hidden) the encoder output that a decoder stack cross-attends to.
            encoder_attention_mask: (batch, source) with 0 for source padding.
            token_type_ids: (batch, seq) segment ids in [0, type_vocab_size) (BERT's). A model without token-type
                embeddings (`config.type_vocab_size=0`) has the one segment 0: it takes all-zero ids, as a BERT
                tokenizer returns them for a single text, and ignores them.

        Returns:
            `BaseModelOutputWithPastAndCrossAttentions` with `last_hidden_state` (batch, seq, hidden) and, for causal
            models with `use_cache`, the `cache`.
        """
        self._check_inputs(input_ids, inputs_embeds, token_type_ids, encoder_hidden_states)
        packed = position_ids is not None  # the caller's positions may restart: several documents in a row
        if inputs_embeds is None:
            inputs_embeds = self.embeddings.token_embeddings(input_ids)

        if use_cache and cache is None and self.config.is_decoder:
            cache = DynamicCache(config=self.config)
            if encoder_hidden_states is not None:
                cache = EncoderDecoderCache(cache, DynamicCache(config=self.config))
        past_seen_tokens = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
            position_ids = position_ids.unsqueeze(0)  # (1, seq)
        self._check_positions_and_mask(position_ids, attention_mask, inputs_embeds.shape[:2], past_seen_tokens)

        attention_mask, encoder_attention_mask = self._attention_masks(
            inputs_embeds, attention_mask, cache, position_ids if packed else None, encoder_hidden_states,
            encoder_attention_mask,
        )

        hidden_states = self.embeddings(inputs_embeds, position_ids, token_type_ids)
        position_embeddings = self.rotary_emb(hidden_states, position_ids) if self.rotary_emb is not None else None
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                attention_mask,
                encoder_hidden_states,  # positional, so that gradient checkpointing passes its gradient back
                encoder_attention_mask=encoder_attention_mask,
                position_embeddings=position_embeddings,
                cache=cache,
                position_ids=position_ids,
                **kwargs,
            )
        if self.final_layer_norm is not None:
            hidden_states = self.final_layer_norm(hidden_states)
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states, cache=cache if use_cache else None
        )

    def _attention_masks(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: Cache | None,
        packed_position_ids: torch.LongTensor | None,
        encoder_hidden_states: torch.Tensor | None,
        encoder_attention_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The self-attention mask (causal or bidirectional, with padding) and, in a decoder, the source mask that
        cross-attention uses, in the form the attention implementation wants (None when SDPA needs none).

        `packed_position_ids` (batch or 1, seq): the caller's positions. Where they restart at 0 inside a row, the row
        packs several documents (DataCollatorWithFlattening), and no token attends across a document boundary, in
        causal and bidirectional stacks alike.
        """
        mask_kwargs = dict(config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask)
        documents = self._packed_documents(inputs_embeds, attention_mask, cache, packed_position_ids)
        if documents is not None:
            mask_kwargs["and_mask_function"] = packed_sequence_mask_function(documents)
        if self.config.is_decoder:
            self_attention_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
            attention_mask = create_causal_mask(**mask_kwargs, cache=self_attention_cache, position_ids=None)
        else:
            attention_mask = create_bidirectional_mask(**mask_kwargs, cache=cache)
        if encoder_hidden_states is not None:
            encoder_attention_mask = create_bidirectional_mask(
                config=self.config,
                inputs_embeds=inputs_embeds,
                attention_mask=encoder_attention_mask,
                encoder_hidden_states=encoder_hidden_states,
            )
        return attention_mask, encoder_attention_mask

    @staticmethod
    def _packed_documents(
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: Cache | None,
        packed_position_ids: torch.LongTensor | None,
    ) -> torch.Tensor | None:
        """(batch, seq) the index of the document each token belongs to, as transformers'
        `find_packed_sequence_indices` reads it from positions restarting at 0; None for rows of one sequence."""
        # Several documents need several tokens, no padding mask and no cache before them. A static cache's length is
        # a tensor on the device: under torch.compile a row is one sequence, as in transformers' masks.
        if (packed_position_ids is None or attention_mask is not None or inputs_embeds.shape[1] < 2
                or torch.compiler.is_compiling() or (cache is not None and cache.get_seq_length() != 0)):
            return None
        return find_packed_sequence_indices(packed_position_ids.expand(inputs_embeds.shape[0], -1))

    # Input checks: an index error deep inside an embedding lookup (or a CUDA assert) tells the user nothing.
    # The value checks read tensors on the host only where they already are (see `check_in_range`), so a decoding
    # step on an accelerator does not wait for the device; under torch.compile they are left out.
    def _check_inputs(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor | None,
        token_type_ids: torch.LongTensor | None,
        encoder_hidden_states: torch.Tensor | None,
    ):
        """What forward is given, before any of it is used: one of ids and embeddings, the ids' shape and values,
        token types, and encoder states exactly where the stack cross-attends."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
        self._check_encoder_hidden_states(encoder_hidden_states)
        if input_ids is not None:
            self._check_token_ids(input_ids)
        elif inputs_embeds.dim() != 3 or inputs_embeds.shape[1] == 0:
            shape = tuple(inputs_embeds.shape)
            problem = "has no positions" if inputs_embeds.dim() == 3 else "must be 3-D (batch, seq, hidden)"
            raise ValueError(f"inputs_embeds {problem}, got shape {shape}.")
        if token_type_ids is not None:
            input_shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
            self._check_token_type_ids(token_type_ids, input_shape)

    def _check_positions_and_mask(
        self,
        position_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        input_shape: torch.Size,
        past_seen_tokens: int | torch.Tensor,
    ):
        """Positions within the position table, and a mask that covers the cached and the new tokens."""
        self._check_positions(position_ids)
        self._check_attention_mask(attention_mask, *input_shape, past_seen_tokens)

    def _check_token_ids(self, input_ids: torch.LongTensor):
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be 2-D (batch, seq), got shape {tuple(input_ids.shape)}; for one "
                             "sequence use input_ids[None] or the tokenizer's return_tensors='pt'.")
        if input_ids.shape[1] == 0:
            raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}: no tokens. Each sequence needs at least "
                             "one (an empty text tokenizes to none with a tokenizer that adds no special tokens).")
        vocab_size = self.config.vocab_size
        check_in_range(
            input_ids,
            vocab_size,
            lambda bad: (
                f"input_ids contains token id {bad}, outside the vocabulary [0, {vocab_size}). Check that the "
                "tokenizer matches the model, or resize the embeddings with `resize_token_embeddings`."
            ),
        )

    def _check_token_type_ids(self, token_type_ids: torch.LongTensor, input_shape: torch.Size):
        if token_type_ids.shape != input_shape:
            raise ValueError(f"token_type_ids has shape {tuple(token_type_ids.shape)}; expected one segment id per "
                             f"input token, (batch, seq) = {tuple(input_shape)}.")
        types = self.config.type_vocab_size
        if types:
            message = f"outside the token types [0, type_vocab_size={types})"
        else:
            message = ("but this model has no token-type embeddings (config.type_vocab_size=0): it reads every token "
                       "as segment 0")
        check_in_range(
            token_type_ids,
            max(types, 1),
            lambda bad: f"`token_type_ids` were given with segment id {bad}, {message}.",
        )

    def _check_encoder_hidden_states(self, encoder_hidden_states: torch.Tensor | None):
        has_cross_attention = self.config.is_decoder and self.config.is_encoder_decoder
        if has_cross_attention != (encoder_hidden_states is not None):
            raise ValueError(
                "`encoder_hidden_states` are needed by, and only by, the decoder stack of an encoder-decoder model; "
                f"this stack has is_decoder={self.config.is_decoder}, is_encoder_decoder="
                f"{self.config.is_encoder_decoder} and got encoder_hidden_states={encoder_hidden_states is not None}."
            )

    def _check_positions(self, position_ids: torch.LongTensor):
        # The limit is on position values, not on the row: a packed row of several documents may be longer.
        if self.config.position_embedding_type == "rotary":
            return  # rotary positions are computed on the fly and extend to any length
        limit = self.config.max_position_embeddings
        check_in_range(
            position_ids,
            limit,
            lambda bad: (
                f"Position {bad} is outside [0, max_position_embeddings={limit}) of "
                f"{self.config.position_embedding_type!r} positions: a sequence (or each document of a packed row) "
                f"can be at most {limit} tokens. Truncate the input, or use position_embedding_type='rotary'."
            ),
        )

    def _check_attention_mask(
        self, attention_mask: torch.Tensor | None, batch: int, seq: int, past: int | torch.Tensor
    ):
        if attention_mask is None:
            return
        shape = tuple(attention_mask.shape)
        # A static cache's length is a tensor on the model's device: reading it would wait for the device at every
        # decoding step, so then only the new tokens are known to fit.
        static = isinstance(past, torch.Tensor)
        keys = seq if static else past + seq
        if attention_mask.dim() == 2:
            ok = shape[0] == batch and (shape[1] >= keys if static else shape[1] == keys)
            expected = f"(batch={batch}, cached + new tokens{'>=' if static else '='}{keys})"
        elif attention_mask.dim() == 4:
            ok = shape[0] == batch and shape[2] == seq and shape[3] >= keys
            expected = f"(batch={batch}, 1 or heads, query length={seq}, key length>={keys})"
        else:
            ok, expected = False, "2D (batch, cached + new tokens) or 4D (batch, 1, query length, key length)"
        if not ok:
            raise ValueError(f"attention_mask has shape {shape}; expected {expected}.")


class MiniTransformerMaskedLMTransform(nn.Module):
    """BERT's MLM transform, LayerNorm(act(h W + b)), between the encoder and the vocabulary projection."""

    def __init__(self, config: MiniTransformerConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act_fn = ACT2FN[config.hidden_act]
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(self.act_fn(self.dense(hidden_states)))


class MiniTransformerForMaskedLM(MiniTransformerPreTrainedModel):
    """Encoder with a tied projection onto the vocabulary, trained to fill in masked tokens."""

    _tied_weights_keys = {"lm_head.weight": "model.embeddings.token_embeddings.weight"}

    def __init__(self, config: MiniTransformerConfig):
        # The head's own copy (its body shares it): what is set on `model.config` (`set_attn_implementation`,
        # `num_labels`) never reaches the caller's object, which may go on to build other models.
        config = copy.deepcopy(config)
        super().__init__(config)
        self.model = MiniTransformerModel(config)
        self.transform = MiniTransformerMaskedLMTransform(config) if config.masked_lm_transform else None
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MaskedLMOutput:
        r"""
        labels: (batch, seq) target ids at masked positions, -100 elsewhere (ignored by the loss). If every label
            is -100 the loss is NaN (0 / 0), as in transformers' own models.
        token_type_ids: (batch, seq) segment ids, read by models with `config.type_vocab_size` (BERT's); all-zero ids,
            as a BERT tokenizer returns them for one text, are taken by every model.
        Returns `MaskedLMOutput` with `logits` (batch, seq, vocab); with `labels`, `config.logits_with_loss` can ask
        for (labelled, vocab) logits at the masked positions only, or for none.
        """
        outputs = self.model(
            input_ids, attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds,
            token_type_ids=token_type_ids, **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if self.transform is not None:
            hidden_states = self.transform(hidden_states)
        logits, loss = lm_logits_and_loss(self, hidden_states, labels, **kwargs)
        return MaskedLMOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


def is_static_cache(cache: Cache | None) -> bool:
    """Whether `cache` (an encoder-decoder's: its self-attention part) is of a fixed size, as transformers' static
    cache, whose decoding steps `generate` compiles."""
    decoder_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
    return cache is not None and cache.is_compileable and type(decoder_cache) is not DynamicCache


class MiniTransformerGenerationMixin(GenerationMixin):
    """transformers' generation, with its static-cache fast path on the CPU too.

    `generate(..., cache_implementation="static")` compiles the decoding step (`torch.compile`, full graph) where
    transformers does it on accelerators only; here the CPU gets it as well, with inductor's default mode (the CUDA
    graphs of "reduce-overhead" do not apply). The first call pays the compilation. A `compile_config` of the
    caller, or `disable_compile=True`, is followed as given.
    """

    def _valid_auto_compile_criteria(self, model_kwargs: dict, generation_config) -> bool:
        if is_static_cache(model_kwargs.get("cache")) and self.device.type == "cpu" and (
            generation_config.compile_config is None
        ):
            compile_config = CompileConfig(fullgraph=True, mode="default")
            compile_config._compile_all_devices = True  # transformers' own switch for compiling off accelerators
            generation_config.compile_config = compile_config  # generate's per-call copy
        return super()._valid_auto_compile_criteria(model_kwargs, generation_config)

    def _prepare_model_inputs(self, inputs: torch.Tensor | None, bos_token_id: torch.Tensor | None, model_kwargs: dict
                              ) -> tuple[torch.Tensor, str | None, dict]:
        # Here, where generate() has found its prompt, rather than in a forward pass after it has built masks and
        # caches around an empty tensor (or failed to, deep inside).
        inputs, input_name, model_kwargs = super()._prepare_model_inputs(inputs, bos_token_id, model_kwargs)
        if inputs.dim() >= 2 and inputs.shape[1] == 0:
            if self.config.is_encoder_decoder:
                remedy = "the source needs at least one token"
            else:
                remedy = f"pass at least one token, or no {input_name} at all to start from bos_token_id"
            raise ValueError(f"generate() got {input_name} of shape {tuple(inputs.shape)}, no tokens: {remedy}.")
        return inputs, input_name, model_kwargs

    def _prepare_cache_for_generation(self, generation_config, model_kwargs: dict, generation_mode, batch_size: int,
                                      max_cache_length: int):
        super()._prepare_cache_for_generation(
            generation_config, model_kwargs, generation_mode, batch_size, max_cache_length
        )
        if is_static_cache(model_kwargs.get("cache")):
            self._check_static_generation_length(model_kwargs, max_cache_length)

    def _check_static_generation_length(self, model_kwargs: dict, max_cache_length: int):
        """A ValueError now if the tokens a static-cache generation feeds would run past the position table.

        Its decoding steps run compiled, where the model's own position check is left out (it would read values on
        the host at every step): past the table, inductor's kernel fails with an "index out of bounds" instead.
        """
        if self.config.position_embedding_type == "rotary":
            return  # rotary positions are computed on the fly, for any length
        limit = self.config.max_position_embeddings
        # The cache holds every token fed: the prompt, then each generated token but the last.
        if self.config.is_encoder_decoder:  # the decoder's positions count from its start token
            last, prompt_end = max_cache_length - 1, 0
        else:  # positions follow the attention mask, so a left-padded row starts at 0 after its padding
            position_ids = model_kwargs["position_ids"]  # (batch, prompt)
            prompt_end = int(position_ids[:, -1].max())
            last = prompt_end + max_cache_length - position_ids.shape[1]
        if last >= limit:
            raise ValueError(
                f"This generation would reach position {last}, past the last of the {limit} "
                f"{self.config.position_embedding_type!r} positions (max_position_embeddings={limit}): the prompt "
                f"ends at position {prompt_end} and the static cache is sized for {max_cache_length} tokens. Ask for "
                f"{last - limit + 1} fewer new tokens (max_new_tokens), shorten the prompt, or use "
                "position_embedding_type='rotary'."
            )


class MiniTransformerForCausalLM(MiniTransformerPreTrainedModel, MiniTransformerGenerationMixin):
    """Decoder-only language model: causal self-attention, tied output projection, generation with a KV cache."""

    _tied_weights_keys = {"lm_head.weight": "model.embeddings.token_embeddings.weight"}

    def __init__(self, config: MiniTransformerConfig):
        # One causal stack, whatever the caller's config says; as BartForCausalLM, on a copy: the caller's object
        # (which may go on to build an encoder) is left as it was.
        config = copy.deepcopy(config)
        config.is_decoder, config.is_encoder_decoder = True, False
        super().__init__(config)
        self.model = MiniTransformerModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        token_type_ids: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        r"""
        labels: (batch, seq) the input ids themselves (-100 to ignore a position); the loss shifts them by one, so
            position t is scored on predicting token t + 1. If no position is scored the loss is NaN (0 / 0), as in
            transformers' own models.
        logits_to_keep: compute logits only for the last `n` positions (0: all), or for the given indices.
        token_type_ids: (batch, seq) segment ids, read by models with `config.type_vocab_size` (BERT's); all-zero ids,
            as a BERT tokenizer returns them for one text, are taken by every model.
        Returns `CausalLMOutputWithPast` with `logits` (batch, kept positions, vocab) and the `cache`; with `labels`,
        `config.logits_with_loss` can ask for (labelled, vocab) logits at the scored positions only, or for none.
        """
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            token_type_ids=token_type_ids,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        shift_labels = kwargs.get("shift_labels")
        if labels is not None and shift_labels is None:
            # ForCausalLMLoss shifts the labels itself; the fewer-logits modes get them shifted the same way:
            # position t is scored on token t + 1, the last position on nothing.
            shift_labels = nn.functional.pad(labels, (0, 1), value=-100)[..., 1:]
        logits, loss = lm_logits_and_loss(self, hidden_states, labels, shift_labels, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


def seq2seq_config(config: MiniTransformerConfig, own_copy: bool = False) -> MiniTransformerConfig:
    """`config` set up for the encoder-decoder, on a copy, so the caller's object is left as it was. A config already
    set up (a seq2seq checkpoint's, or the head's own copy, which its bare encoder-decoder then shares, as BART's do)
    is returned as it is, unless `own_copy` (what a head asks for)."""
    # transformers 5 dropped these two tasks; `pipeline(task, ...)` finds them here (pipelines_minitransformer.py).
    pipelines = {**CUSTOM_PIPELINES, **(getattr(config, "custom_pipelines", None) or {})}
    is_set_up = (config.is_encoder_decoder and not config.is_decoder
                 and getattr(config, "custom_pipelines", None) == pipelines)
    if is_set_up and not own_copy:
        return config
    config = copy.deepcopy(config)
    config.is_encoder_decoder, config.is_decoder = True, False
    config.custom_pipelines = pipelines
    return config


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Teacher forcing: decoder inputs (start, y_1, .., y_n-1) for targets (y_1, .., y_n); -100 becomes pad."""
    decoder_input_ids = labels.new_full(labels.shape, decoder_start_token_id)
    decoder_input_ids[..., 1:] = labels[..., :-1]
    return decoder_input_ids.masked_fill(decoder_input_ids == -100, pad_token_id)


class MiniTransformerSeq2SeqModel(MiniTransformerPreTrainedModel):
    """The bare encoder-decoder of the paper's Figure 1 (as `BartModel` / `MarianModel`): the decoder's last hidden
    states, with the encoder's output and the cache. `MiniTransformerForSeq2SeqLM` holds it as `model`.

    source -> encoder (bidirectional self-attention) ; target -> decoder (masked self-attention, cross-attention over
    the encoder output, feed-forward). Source and target embeddings are one matrix when `config.tie_word_embeddings`.
    """

    _tied_weights_keys = {"decoder.embeddings.token_embeddings.weight": "encoder.embeddings.token_embeddings.weight"}
    # A checkpoint of the LM head loads here without its projection.
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]

    def __init__(self, config: MiniTransformerConfig):
        config = seq2seq_config(config)
        super().__init__(config)
        # As T5 does, each stack reads a copy of the config that differs in attention direction and depth only.
        encoder_config = copy.deepcopy(config)
        encoder_config.use_cache = False
        decoder_config = copy.deepcopy(config)
        decoder_config.is_decoder = True
        decoder_config.num_hidden_layers = config.decoder_layers
        self.encoder = MiniTransformerModel(encoder_config)
        self.decoder = MiniTransformerModel(decoder_config)
        self.post_init()

    def init_parallel_plans(self):
        # The config's plan names one stack's layers; here they sit under `encoder.` and `decoder.`, whose own plans
        # (prefixed by transformers) are the whole plan.
        super().init_parallel_plans()
        stacks = ("encoder.", "decoder.")
        self._tp_plan = {key: style for key, style in self._tp_plan.items() if key.startswith(stacks)}

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding):
        self.encoder.set_input_embeddings(value)
        if self.config.tie_word_embeddings:
            self.decoder.set_input_embeddings(value)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        token_type_ids: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqModelOutput:
        r"""
        input_ids / attention_mask: (batch, source) source tokens and their padding mask (1 real, 0 pad).
        token_type_ids: (batch, source) the source's segment ids, for the encoder (see MiniTransformerModel).
        decoder_input_ids / decoder_attention_mask: (batch, target) decoder inputs and their padding mask. Without
            them (as the feature-extraction pipeline calls it) the decoder reads the source shifted right behind
            `config.decoder_start_token_id`, as BartModel does.
        encoder_outputs: the encoder's output, to skip re-encoding (what `generate` passes at every step).
        Returns `Seq2SeqModelOutput` with the decoder's `last_hidden_state` (batch, target, hidden), the
        `EncoderDecoderCache` and the encoder's last hidden state.
        """
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            if input_ids is None:
                raise ValueError("Pass `decoder_input_ids` (or `decoder_inputs_embeds`), or `input_ids` to decode "
                                 "the source shifted right.")
            decoder_input_ids = shift_tokens_right(input_ids, self.config.pad_token_id,
                                                   self.config.decoder_start_token_id)
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, token_type_ids=token_type_ids,
                **kwargs,
            )
        elif isinstance(encoder_outputs, tuple):  # from a `return_dict=False` encoder call: its first item is needed
            encoder_outputs = BaseModelOutput(last_hidden_state=encoder_outputs[0])
        decoder_outputs = self.decoder(
            decoder_input_ids,
            attention_mask=decoder_attention_mask,
            cache=cache,
            inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            **kwargs,
        )
        return Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            cache=decoder_outputs.cache,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )


class MiniTransformerForSeq2SeqLM(MiniTransformerPreTrainedModel, MiniTransformerGenerationMixin):
    """The encoder-decoder Transformer of the paper's Figure 1: translation, summarisation, any text-to-text task.

    `model` (a `MiniTransformerSeq2SeqModel`) -> projection onto the vocabulary, which shares the embedding matrix
    of source and target tokens when `config.tie_word_embeddings` (paper §3.4).
    """

    # Loaded from a bare encoder-decoder checkpoint, the output bias is reported missing (as every weight outside
    # `model.` a checkpoint lacks is) and starts at zero, as `_init_weights` leaves it.
    _tied_weights_keys = {"lm_head.weight": "model.encoder.embeddings.token_embeddings.weight"}

    def __init__(self, config: MiniTransformerConfig):
        config = seq2seq_config(config, own_copy=True)  # the head's own, as every head's (MiniTransformerForMaskedLM)
        super().__init__(config)
        self.model = MiniTransformerSeq2SeqModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        # The labels are already aligned with the decoder outputs (the decoder inputs are the shifted ones), so the
        # loss is the unshifted token cross-entropy of the masked-LM heads.
        self.loss_type = "ForMaskedLM"
        self.post_init()

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        if not self.config.tie_word_embeddings:  # the target embeddings are a matrix of their own
            self.model.decoder.resize_token_embeddings(embeddings.num_embeddings, mean_resizing=mean_resizing)
        for stack in (self.model.encoder, self.model.decoder):  # their config copies check token ids
            stack.config.vocab_size = self.config.vocab_size
        return embeddings

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> dict:
        """GenerationMixin's signature: `input_ids` are the decoder's sequences so far (as for BART)."""
        # A `generate` that continues from a returned cache is given the sequences so far as `decoder_input_ids`.
        # transformers feeds only their uncached tail when a full-length `decoder_attention_mask` says so, and
        # otherwise all of them again, on top of the cache; the cache's length says it just as well.
        if next_sequence_length is None and cache is not None:
            past_length = cache.get_seq_length()
            if 0 < past_length < input_ids.shape[1]:
                next_sequence_length = input_ids.shape[1] - past_length
        if kwargs.get("decoder_inputs_embeds") is not None:
            raise ValueError("generate() feeds the decoder its own tokens (a prompt goes in `decoder_input_ids`): "
                             "`decoder_inputs_embeds` are for teacher-forced forward passes.")
        # The source's token types were read with the source, by the encoder, when `generate` began; transformers
        # would cut them to the decoder's length and hand them to the decoder, which has no segments.
        kwargs.pop("token_type_ids", None)
        return super().prepare_inputs_for_generation(
            input_ids, next_sequence_length=next_sequence_length, cache=cache, **kwargs
        )

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """What DataCollatorForSeq2Seq calls to build `decoder_input_ids` when it pads a batch."""
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        token_type_ids: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqLMOutput:
        r"""
        input_ids / attention_mask: (batch, source) source tokens and their padding mask (1 real, 0 pad).
        token_type_ids: (batch, source) the source's segment ids, for the encoder (see MiniTransformerModel).
        decoder_input_ids: (batch, target) decoder inputs; by default `labels` shifted right behind
            `config.decoder_start_token_id`.
        encoder_outputs: the encoder's output, to skip re-encoding (what `generate` passes at every step).
        labels: (batch, target) target ids, -100 to ignore; position t is scored on predicting labels[t]. If every
            label is -100 the loss is NaN (0 / 0), as in transformers' own models.
        logits_to_keep: compute logits only for the last `n` target positions (0: all), or for the given indices;
            `generate` asks for the last one.
        Returns `Seq2SeqLMOutput` with `logits` (batch, target, vocab), the `EncoderDecoderCache` and the encoder's
        last hidden state; with `labels`, `config.logits_with_loss` can ask for fewer logits (as in the LM heads).
        """
        if labels is not None:
            use_cache = False  # teacher forcing sees the whole target at once: nothing to cache
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            cache=cache,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            token_type_ids=token_type_ids,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits, loss = lm_logits_and_loss(self, hidden_states, labels, **kwargs)
        return Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )


class MiniTransformerForSequenceClassification(MiniTransformerPreTrainedModel):
    """Pools the sequence (`config.classifier_pooling`) and classifies it; regression, single- or multi-label."""

    def __init__(self, config: MiniTransformerConfig):
        config = copy.deepcopy(config)  # the head's own copy, as MiniTransformerForMaskedLM's
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = MiniTransformerModel(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SequenceClassifierOutput:
        r"""
        labels: (batch,) class ids, (batch, num_labels) multi-hot floats, or (batch,) floats for regression;
            `config.problem_type` decides (inferred from num_labels and the labels' dtype when unset).
        token_type_ids: (batch, seq) segment ids, read by models with `config.type_vocab_size` (BERT's); all-zero ids,
            as a BERT tokenizer returns them for one text, are taken by every model.
        Returns `SequenceClassifierOutput` with `logits` (batch, num_labels).
        """
        outputs = self.model(
            input_ids, attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds,
            token_type_ids=token_type_ids, **kwargs,
        )
        pooled = self.pool(outputs.last_hidden_state, attention_mask)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )

    def pool(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(batch, seq, hidden) -> (batch, hidden), ignoring padding marked 0 in a 2D `attention_mask`."""
        if attention_mask is None or attention_mask.dim() != 2:
            attention_mask = torch.ones(hidden_states.shape[:2], device=hidden_states.device)
        mask = attention_mask.to(hidden_states.dtype)  # (batch, seq)
        if self.config.classifier_pooling == "first":
            return hidden_states[:, 0]
        if self.config.classifier_pooling == "mean":
            summed = (hidden_states * mask.unsqueeze(-1)).sum(dim=1)
            return summed / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
        # "last": the last attended position, whichever side the padding is on.
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask.long() * positions).argmax(dim=-1)  # (batch,)
        return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), last]


class MiniTransformerForTokenClassification(MiniTransformerPreTrainedModel):
    """A label for every token (NER, tagging): dropout + linear classifier over each hidden state."""

    def __init__(self, config: MiniTransformerConfig):
        config = copy.deepcopy(config)  # the head's own copy, as MiniTransformerForMaskedLM's
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = MiniTransformerModel(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> TokenClassifierOutput:
        r"""
        labels: (batch, seq) class ids, -100 for positions to ignore (padding, continuation sub-words).
        token_type_ids: (batch, seq) segment ids, read by models with `config.type_vocab_size` (BERT's); all-zero ids,
            as a BERT tokenizer returns them for one text, are taken by every model.
        Returns `TokenClassifierOutput` with `logits` (batch, seq, num_labels).
        """
        outputs = self.model(
            input_ids, attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds,
            token_type_ids=token_type_ids, **kwargs,
        )
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, config=self.config)
        return TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


# Every head with its Auto class. A saved config names in `auto_map` all the heads its weights serve, so one folder
# serves each `AutoModelFor...` through `trust_remote_code=True` whichever head wrote it: the five heads of one stack
# share the body `model.*`; an encoder-decoder checkpoint (two stacks, `model.encoder.*` and `model.decoder.*`)
# serves SEQ2SEQ_AUTO_CLASS_NAMES, its AutoModel being the bare encoder-decoder.
AUTO_CLASS_NAMES = {
    "AutoModel": "MiniTransformerModel",
    "AutoModelForMaskedLM": "MiniTransformerForMaskedLM",
    "AutoModelForCausalLM": "MiniTransformerForCausalLM",
    "AutoModelForSequenceClassification": "MiniTransformerForSequenceClassification",
    "AutoModelForTokenClassification": "MiniTransformerForTokenClassification",
    "AutoModelForSeq2SeqLM": "MiniTransformerForSeq2SeqLM",
}
SEQ2SEQ_AUTO_CLASS_NAMES = {
    "AutoModel": "MiniTransformerSeq2SeqModel",
    "AutoModelForSeq2SeqLM": "MiniTransformerForSeq2SeqLM",
}


__all__ = [
    "MiniTransformerPreTrainedModel",
    "MiniTransformerModel",
    "MiniTransformerForMaskedLM",
    "MiniTransformerForCausalLM",
    "MiniTransformerForSequenceClassification",
    "MiniTransformerForTokenClassification",
    "MiniTransformerSeq2SeqModel",
    "MiniTransformerForSeq2SeqLM",
]
