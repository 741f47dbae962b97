"""The model against an independent float64 implementation of the source document's equations (the paper, §3).

The reference below is written from the equations, not from the model: per-head W_Q^i, W_K^i, W_V^i slices,
softmax(Q_i K_i^T / sqrt(d_k)) V_i for each head separately, Concat, W_O, residual + LayerNorm, FFN. It reads the
model's weights by name and must reproduce its hidden states to 1e-10 in float64. The encoder-decoder head is held to
the paper's §3.1-3.5 the same way: a decoder layer adds masked self-attention (query i sees keys j <= i) and
encoder-decoder attention (queries from the decoder, keys and values from the encoder output), and the output
projection shares the embedding matrix (§3.4).
"""

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn
from transformers.modeling_outputs import Seq2SeqLMOutput

from hf_minitransformer import MiniTransformerConfig, MiniTransformerForSeq2SeqLM, MiniTransformerModel

from .conftest import make_config


Weights = dict[str, torch.Tensor]


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


ACTIVATIONS = {
    "relu": lambda x: torch.where(x > 0, x, torch.zeros_like(x)),
    "gelu": lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
    "gelu_new": lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    "silu": lambda x: x / (1 + torch.exp(-x)),
}


def positional_encoding(num_positions: int, d_model: int) -> torch.Tensor:
    pe = torch.empty(num_positions, d_model, dtype=torch.float64)
    for pos in range(num_positions):
        for i in range(0, d_model, 2):
            angle = pos / 10000 ** (i / d_model)
            pe[pos, i] = math.sin(angle)
            if i + 1 < d_model:
                pe[pos, i + 1] = math.cos(angle)
    return pe


def rotate(x: torch.Tensor, theta_base: float = 10000.0) -> torch.Tensor:
    """RoFormer rotation of (seq, d_k): pair dimension j with j + d_k/2 and turn it by pos * base^(-2j/d_k)."""
    seq, d_k = x.shape
    half = d_k // 2
    out = x.clone()
    for pos in range(seq):
        for j in range(half):
            angle = pos * theta_base ** (-2 * j / d_k)
            a, b = x[pos, j], x[pos, j + half]
            out[pos, j] = a * math.cos(angle) - b * math.sin(angle)
            out[pos, j + half] = b * math.cos(angle) + a * math.sin(angle)
    return out


def causal_mask(n: int) -> torch.Tensor:
    """(n, n), True where query i may attend to key j: the decoder's masked self-attention (paper §3.2.3)."""
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    return j <= i


def linear(x: torch.Tensor, weights: Weights, name: str, bias: bool) -> torch.Tensor:
    """x W^T (+ b): `bias` says whether the equation has one, and the model must hold exactly that parameter."""
    assert (f"{name}.bias" in weights) == bias, f"{name}: the equations {'need' if bias else 'have no'} a bias"
    out = x @ weights[f"{name}.weight"].T
    return out + weights[f"{name}.bias"] if bias else out


Dropout = Callable[[torch.Tensor], torch.Tensor]


def no_dropout(x: torch.Tensor) -> torch.Tensor:
    return x


def multi_head_attention(
    q_input: torch.Tensor,
    kv_input: torch.Tensor,
    weights: Weights,
    prefix: str,
    config: MiniTransformerConfig,
    mask: torch.Tensor | None = None,
    rotary: bool = False,
) -> torch.Tensor:
    """MultiHead(Q = q_input W_Q, K = kv_input W_K, V = kv_input W_V): (N_q, d), (N_kv, d) -> (N_q, d).

    `mask` (N_q, N_kv) is True where query i may attend to key j; `rotary` turns each head's queries and keys.
    """
    h = config.num_attention_heads
    d_k = config.hidden_size // h
    heads = []
    for i in range(h):  # 7. each head has its own W_Q^i, W_K^i, W_V^i
        rows = slice(i * d_k, (i + 1) * d_k)

        def project(inp: torch.Tensor, name: str) -> torch.Tensor:
            out = inp @ weights[f"{prefix}.{name}.weight"][rows].T
            assert (f"{prefix}.{name}.bias" in weights) == config.attention_bias, f"{prefix}.{name}.bias"
            return out + weights[f"{prefix}.{name}.bias"][rows] if config.attention_bias else out

        q, k, v = project(q_input, "q_proj"), project(kv_input, "k_proj"), project(kv_input, "v_proj")  # 3.
        if rotary:
            q, k = rotate(q), rotate(k)
        scores = q @ k.T / math.sqrt(d_k)  # 4. Q K^T / sqrt(d_k), (N_q, N_kv)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        # A query with no key to attend to (a left pad under a causal mask) is padding itself; its row is zeroed so
        # that no NaN reaches the real tokens, which never attend to it.
        heads.append(torch.softmax(scores, dim=-1).nan_to_num(0.0) @ v)
    # Concat(head_1..head_h) W_O
    return linear(torch.cat(heads, dim=-1), weights, f"{prefix}.o_proj", config.attention_bias)


def feed_forward(z: torch.Tensor, weights: Weights, prefix: str, config: MiniTransformerConfig) -> torch.Tensor:
    """6. FFN(Z) = act(Z W_1 + b_1) W_2 + b_2."""
    inner = ACTIVATIONS[config.hidden_act](linear(z, weights, f"{prefix}.fc1", bias=True))
    return linear(inner, weights, f"{prefix}.fc2", bias=True)


def embed(
    tokens: torch.Tensor,
    token_embeddings: torch.Tensor,
    weights: Weights,
    prefix: str,
    config: MiniTransformerConfig,
    dropout: Dropout = no_dropout,
) -> torch.Tensor:
    """1. Data flow: X = embeddings (x sqrt(d_model), paper §3.4), plus positions (§3.5), then dropout (§5.4)."""
    d_model, n = config.hidden_size, tokens.shape[0]
    x = token_embeddings[tokens]
    if config.scale_embeddings:
        x = x * math.sqrt(d_model)
    if config.position_embedding_type == "sinusoidal":
        x = x + positional_encoding(n, d_model)
    elif config.position_embedding_type == "learned":
        x = x + weights[f"{prefix}embeddings.position_embeddings.weight"][:n]
    return dropout(x)


def reference_layer(
    x: torch.Tensor,
    weights: Weights,
    prefix: str,
    config: MiniTransformerConfig,
    self_mask: torch.Tensor | None,
    memory: torch.Tensor | None = None,
    memory_mask: torch.Tensor | None = None,
    dropout: Dropout = no_dropout,
) -> torch.Tensor:
    """One layer; with `memory` (the encoder output) a decoder layer: self-attention, cross-attention, FFN.

    §5.4: dropout on the output of each sub-layer, before it is added to the sub-layer input and normalised.
    """
    rotary = config.position_embedding_type == "rotary"

    def self_attention(z: torch.Tensor) -> torch.Tensor:
        return multi_head_attention(z, z, weights, f"{prefix}self_attn", config, self_mask, rotary)

    def cross_attention(z: torch.Tensor) -> torch.Tensor:  # §3.2.3: Q from the decoder, K = V = encoder output
        return multi_head_attention(z, memory, weights, f"{prefix}cross_attn", config, memory_mask)

    def ffn(z: torch.Tensor) -> torch.Tensor:
        return feed_forward(z, weights, f"{prefix}feed_forward", config)

    sublayers = [(self_attention, "attn_layer_norm")]
    if memory is not None:
        sublayers.append((cross_attention, "cross_attn_layer_norm"))
    sublayers.append((ffn, "ffn_layer_norm"))
    for sublayer, norm_name in sublayers:
        norm_weight, norm_bias = weights[f"{prefix}{norm_name}.weight"], weights[f"{prefix}{norm_name}.bias"]
        if config.layer_norm_position == "post":  # 2./5. LayerNorm(x + Dropout(Sublayer(x)))
            x = layer_norm(x + dropout(sublayer(x)), norm_weight, norm_bias, config.layer_norm_eps)
        else:  # x + Dropout(Sublayer(LayerNorm(x)))
            x = x + dropout(sublayer(layer_norm(x, norm_weight, norm_bias, config.layer_norm_eps)))
    return x


def reference_stack(
    tokens: torch.Tensor,
    token_embeddings: torch.Tensor,
    weights: Weights,
    prefix: str,
    config: MiniTransformerConfig,
    num_layers: int,
    self_mask: torch.Tensor | None,
    memory: torch.Tensor | None = None,
    memory_mask: torch.Tensor | None = None,
    dropout: Dropout = no_dropout,
) -> torch.Tensor:
    """Embeddings + positions, `num_layers` layers, and (pre-LN only) a final LayerNorm: (N,) -> (N, d_model)."""
    x = embed(tokens, token_embeddings, weights, prefix, config, dropout)
    for layer in range(num_layers):
        x = reference_layer(x, weights, f"{prefix}layers.{layer}.", config, self_mask, memory, memory_mask, dropout)
    if config.layer_norm_position == "pre":
        norm_weight, norm_bias = weights[f"{prefix}final_layer_norm.weight"], weights[f"{prefix}final_layer_norm.bias"]
        x = layer_norm(x, norm_weight, norm_bias, config.layer_norm_eps)
    return x


def reference_hidden_states(
    weights: Weights,
    config: MiniTransformerConfig,
    tokens: torch.Tensor,
    pad_mask: torch.Tensor | None = None,
    dropout: Dropout = no_dropout,
) -> torch.Tensor:
    """One sequence `tokens` (N,) -> (N, d_model); pad_mask (N,) with 0 for keys that must not be attended to."""
    n = tokens.shape[0]
    mask = torch.ones(n, n, dtype=torch.bool)
    if config.is_decoder:
        mask = mask & causal_mask(n)
    if pad_mask is not None:
        mask = mask & pad_mask.bool()[None, :]
    token_embeddings = weights["embeddings.token_embeddings.weight"]
    return reference_stack(tokens, token_embeddings, weights, "", config, config.num_hidden_layers, mask,
                           dropout=dropout)


def reference_seq2seq(
    weights: Weights,
    config: MiniTransformerConfig,
    source: torch.Tensor,
    decoder_inputs: torch.Tensor,
    decoder_pad_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pair, source (S,) and decoder inputs (T,) -> encoder output (S, d), decoder output (T, d), logits.

    The source is unpadded; `decoder_pad_mask` (T,) marks with 0 decoder inputs that must not be attended to.

    §3.4: with tied embeddings, source embeddings, target embeddings and the pre-softmax projection are one matrix.
    """
    source_embeddings = weights["model.encoder.embeddings.token_embeddings.weight"]
    if config.tie_word_embeddings:
        target_embeddings = output_projection = source_embeddings
    else:
        target_embeddings = weights["model.decoder.embeddings.token_embeddings.weight"]
        output_projection = weights["lm_head.weight"]
    # Encoder: bidirectional self-attention, nothing masked in an unpadded source.
    memory = reference_stack(
        source, source_embeddings, weights, "model.encoder.", config, config.num_hidden_layers, None
    )
    # Decoder: masked self-attention (j <= i, and not to padding), then attention over every source position.
    self_mask = causal_mask(decoder_inputs.shape[0])
    if decoder_pad_mask is not None:
        self_mask = self_mask & decoder_pad_mask.bool()[None, :]
    decoder = reference_stack(
        decoder_inputs, target_embeddings, weights, "model.decoder.", config, config.decoder_layers, self_mask,
        memory=memory,
    )
    logits = decoder @ output_projection.T
    if "lm_head.bias" in weights:
        logits = logits + weights["lm_head.bias"]
    return memory, decoder, logits


@pytest.fixture
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


VARIANTS = {
    "default": {},
    "learned": dict(position_embedding_type="learned"),
    "rotary": dict(position_embedding_type="rotary"),
    "pre_ln": dict(layer_norm_position="pre"),
    "gelu": dict(hidden_act="gelu"),
    "gelu_new": dict(hidden_act="gelu_new"),
    "silu": dict(hidden_act="silu"),
    "causal": dict(is_decoder=True),
    "attention_bias": dict(attention_bias=True),
    "unscaled_embeddings": dict(scale_embeddings=False),
}


def _randomize_norms(model):
    # LayerNorm starts at weight 1, bias 0; random values make sure the reference really applies them.
    for name, param in model.named_parameters():
        if "layer_norm" in name or name.endswith(".bias"):
            param.data.normal_(0.0, 0.5)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_matches_reference_equations_in_float64(float64_default, variant, attn_implementation):
    config = make_config(**VARIANTS[variant])
    model = MiniTransformerModel(config).eval()
    model.set_attn_implementation(attn_implementation)
    _randomize_norms(model)
    assert model.dtype == torch.float64
    tokens = torch.randint(0, config.vocab_size, (2, 9))
    with torch.no_grad():
        hidden = model(tokens).last_hidden_state
    weights = {k: v.detach() for k, v in model.state_dict().items()}
    for b in range(tokens.shape[0]):
        expected = reference_hidden_states(weights, config, tokens[b])
        torch.testing.assert_close(hidden[b], expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("is_decoder", [False, True])
def test_padding_mask_matches_reference(float64_default, is_decoder, side):
    # Left padding is what a causal stack sees in batched generation: there, real tokens come after the padding and
    # only the mask keeps them from attending to it.
    config = make_config(is_decoder=is_decoder)
    model = MiniTransformerModel(config).eval()
    tokens = torch.randint(3, config.vocab_size, (2, 7))
    padded_row = [1] * 4 + [0] * 3 if side == "right" else [0] * 3 + [1] * 4
    mask = torch.tensor([[1] * 7, padded_row])  # the second row has 4 real tokens
    with torch.no_grad():
        hidden = model(tokens, attention_mask=mask).last_hidden_state
    weights = {k: v.detach() for k, v in model.state_dict().items()}
    for b in range(2):
        expected = reference_hidden_states(weights, config, tokens[b], pad_mask=mask[b])
        real = mask[b].bool()
        torch.testing.assert_close(hidden[b][real], expected[real], rtol=0, atol=1e-10)


SEQ2SEQ_VARIANTS = {
    "default": {},
    "pre_ln": dict(layer_norm_position="pre"),
    "learned": dict(position_embedding_type="learned"),
    "rotary": dict(position_embedding_type="rotary"),  # self-attention only; cross-attention has no positions
    "gelu": dict(hidden_act="gelu"),
    "attention_bias": dict(attention_bias=True),
    "deeper_decoder": dict(num_hidden_layers=2, decoder_layers=3),
    "untied": dict(tie_word_embeddings=False),
}


def seq2seq_model(variant: str, attn_implementation: str) -> MiniTransformerForSeq2SeqLM:
    model = MiniTransformerForSeq2SeqLM(make_config(**SEQ2SEQ_VARIANTS[variant])).eval()
    model.set_attn_implementation(attn_implementation)
    _randomize_norms(model)
    assert model.dtype == torch.float64
    return model


def run_seq2seq(model: MiniTransformerForSeq2SeqLM, **inputs) -> tuple[Seq2SeqLMOutput, torch.Tensor]:
    """The model's output and the decoder stack's last hidden state (batch, target, hidden), taken from that call."""
    captured = []

    def keep_decoder_output(module: nn.Module, args: tuple, output) -> None:
        captured.append(output.last_hidden_state)

    handle = model.get_decoder().register_forward_hook(keep_decoder_output)
    try:
        with torch.no_grad():
            outputs = model(**inputs)
    finally:
        handle.remove()
    return outputs, captured[0]


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("variant", sorted(SEQ2SEQ_VARIANTS))
def test_seq2seq_matches_reference_equations_in_float64(float64_default, variant, attn_implementation):
    model = seq2seq_model(variant, attn_implementation)
    config = model.config
    assert len(model.get_decoder().layers) == config.decoder_layers
    source = torch.randint(0, config.vocab_size, (2, 9))
    decoder_inputs = torch.randint(0, config.vocab_size, (2, 6))  # a different length, so no transpose goes unseen
    outputs, decoder_hidden = run_seq2seq(model, input_ids=source, decoder_input_ids=decoder_inputs)
    weights = {k: v.detach() for k, v in model.state_dict().items()}
    if not config.tie_word_embeddings:  # three matrices of their own, or the reference could not tell them apart
        names = [f"model.{stack}.embeddings.token_embeddings.weight" for stack in ("encoder", "decoder")]
        assert len({weights[name].data_ptr() for name in [*names, "lm_head.weight"]}) == 3
    for b in range(2):
        memory, decoder, logits = reference_seq2seq(weights, config, source[b], decoder_inputs[b])
        torch.testing.assert_close(outputs.encoder_last_hidden_state[b], memory, rtol=0, atol=1e-10)
        torch.testing.assert_close(decoder_hidden[b], decoder, rtol=0, atol=1e-10)
        torch.testing.assert_close(outputs.logits[b], logits, rtol=0, atol=1e-10)


def padded_seq2seq_batch(config: MiniTransformerConfig) -> tuple[dict[str, torch.Tensor], list[int], list[int]]:
    """Right-padded source (mask 0s) and target (labels -100): the model's inputs, and each row's real lengths."""
    source_lengths, target_lengths = [8, 5], [6, 3]
    source = torch.randint(3, config.vocab_size, (2, 8))
    attention_mask = torch.tensor([[1] * n + [0] * (8 - n) for n in source_lengths])
    source = source.masked_fill(attention_mask == 0, config.pad_token_id)
    labels = torch.randint(3, config.vocab_size, (2, 6))
    labels = labels.masked_fill(torch.tensor([[i >= n for i in range(6)] for n in target_lengths]), -100)
    inputs = dict(
        input_ids=source,
        attention_mask=attention_mask,
        labels=labels,
        decoder_attention_mask=(labels != -100).long(),
    )
    return inputs, source_lengths, target_lengths


def teacher_forcing_inputs(config: MiniTransformerConfig, labels: torch.Tensor) -> torch.Tensor:
    """Decoder inputs for targets (y_1 .. y_n): (start, y_1 .. y_n-1)."""
    return torch.cat([torch.tensor([config.decoder_start_token_id]), labels[:-1]])


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("variant", ["default", "pre_ln", "rotary"])
def test_seq2seq_padding_matches_reference_on_each_unpadded_pair(float64_default, variant, attn_implementation):
    model = seq2seq_model(variant, attn_implementation)
    config = model.config
    inputs, source_lengths, target_lengths = padded_seq2seq_batch(config)
    outputs, decoder_hidden = run_seq2seq(model, **inputs)
    weights = {k: v.detach() for k, v in model.state_dict().items()}
    for b, (s, t) in enumerate(zip(source_lengths, target_lengths)):
        source, labels = inputs["input_ids"][b, :s], inputs["labels"][b, :t]
        memory, decoder, logits = reference_seq2seq(weights, config, source, teacher_forcing_inputs(config, labels))
        torch.testing.assert_close(outputs.encoder_last_hidden_state[b, :s], memory, rtol=0, atol=1e-10)
        torch.testing.assert_close(decoder_hidden[b, :t], decoder, rtol=0, atol=1e-10)
        torch.testing.assert_close(outputs.logits[b, :t], logits, rtol=0, atol=1e-10)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("logits_with_loss", ["all", "labelled", "none"])
def test_seq2seq_loss_is_reference_cross_entropy_over_labelled_targets(
    float64_default, logits_with_loss, attn_implementation
):
    model = seq2seq_model("default", attn_implementation)
    config = model.config
    config.logits_with_loss = logits_with_loss
    inputs, source_lengths, target_lengths = padded_seq2seq_batch(config)
    outputs, _ = run_seq2seq(model, **inputs)
    weights = {k: v.detach() for k, v in model.state_dict().items()}
    token_losses = []
    for b, (s, t) in enumerate(zip(source_lengths, target_lengths)):
        source, labels = inputs["input_ids"][b, :s], inputs["labels"][b, :t]
        _, _, logits = reference_seq2seq(weights, config, source, teacher_forcing_inputs(config, labels))
        # -log softmax(logits_t)[y_t], written out
        log_normaliser = torch.log(torch.exp(logits).sum(-1))
        token_losses.append(log_normaliser - logits[torch.arange(t), labels])
    expected = torch.cat(token_losses).mean()  # mean over the 6 + 3 labelled targets; -100 are not counted
    # Our own loss paths keep float64. With "all" the loss is transformers' ForMaskedLMLoss, whose `logits.float()`
    # casts a float64 model's logits down to float32: held to float32 resolution (a few ulps of a loss near 5) there.
    if logits_with_loss != "all":
        assert outputs.loss.dtype == torch.float64
    atol = 1e-10 if outputs.loss.dtype == torch.float64 else 2e-6
    torch.testing.assert_close(outputs.loss.double(), expected, rtol=0, atol=atol)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_seq2seq_left_padded_decoder_inputs_match_reference(float64_default, attn_implementation):
    # Right-padded targets never test the decoder's mask (the causal mask already hides what follows); left-padded
    # decoder inputs do.
    model = seq2seq_model("default", attn_implementation)
    config = model.config
    source = torch.randint(3, config.vocab_size, (2, 7))
    decoder_inputs = torch.randint(3, config.vocab_size, (2, 6))
    decoder_attention_mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
    outputs, decoder_hidden = run_seq2seq(model, input_ids=source, decoder_input_ids=decoder_inputs,
                                          decoder_attention_mask=decoder_attention_mask)
    weights = {k: v.detach() for k, v in model.state_dict().items()}
    for b in range(2):
        _, decoder, logits = reference_seq2seq(
            weights, config, source[b], decoder_inputs[b], decoder_attention_mask[b]
        )
        real = decoder_attention_mask[b].bool()
        torch.testing.assert_close(decoder_hidden[b, real], decoder[real], rtol=0, atol=1e-10)
        torch.testing.assert_close(outputs.logits[b, real], logits[real], rtol=0, atol=1e-10)


def test_the_default_layer_holds_exactly_the_papers_parameters():
    # Biases in the feed-forward (b_1, b_2), none in W_Q, W_K, W_V, W_O; a LayerNorm after each of the two sub-layers.
    layer = MiniTransformerModel(make_config()).layers[0]
    assert {name: tuple(p.shape) for name, p in layer.named_parameters()} == {
        "self_attn.q_proj.weight": (32, 32),
        "self_attn.k_proj.weight": (32, 32),
        "self_attn.v_proj.weight": (32, 32),
        "self_attn.o_proj.weight": (32, 32),
        "attn_layer_norm.weight": (32,),
        "attn_layer_norm.bias": (32,),
        "feed_forward.fc1.weight": (37, 32),
        "feed_forward.fc1.bias": (37,),
        "feed_forward.fc2.weight": (32, 37),
        "feed_forward.fc2.bias": (32,),
        "ffn_layer_norm.weight": (32,),
        "ffn_layer_norm.bias": (32,),
    }


def seeded_dropout(p: float) -> Dropout:
    """Dropout as torch draws it on the CPU (a Bernoulli(1 - p) mask, scaled by 1 / (1 - p)), from the global RNG:
    with the same seed it zeroes the same activations as the model's dropout, if it is applied at the same places, to
    tensors of the same sizes, in the same order."""

    def dropout(x: torch.Tensor) -> torch.Tensor:
        return x * torch.empty_like(x).bernoulli_(1 - p) / (1 - p)

    return dropout


@pytest.mark.parametrize("variant", ["default", "pre_ln", "causal"])
def test_dropout_sits_where_the_paper_puts_it(float64_default, variant):
    # §5.4: "We apply dropout to the output of each sub-layer, before it is added to the sub-layer input and
    # normalized. In addition, we apply dropout to the sums of the embeddings and the positional encodings."
    config = make_config(**VARIANTS[variant], hidden_dropout_prob=0.3)
    config._attn_implementation = "eager"  # attention_dropout is 0: no draw there
    model = MiniTransformerModel(config).train()
    _randomize_norms(model)
    tokens = torch.randint(3, config.vocab_size, (1, 9))  # one row: the model draws masks of the reference's sizes
    torch.manual_seed(1234)
    hidden = model(tokens).last_hidden_state[0].detach()
    weights = {k: v.detach() for k, v in model.state_dict().items()}
    torch.manual_seed(1234)
    expected = reference_hidden_states(weights, config, tokens[0], dropout=seeded_dropout(0.3))
    torch.testing.assert_close(hidden, expected, rtol=0, atol=1e-10)
    # The check can tell: without dropout the same weights give another answer.
    assert not torch.allclose(hidden, reference_hidden_states(weights, config, tokens[0]))
