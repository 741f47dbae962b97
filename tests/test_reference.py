"""The model against an independent float64 implementation of the source document's equations (SPEC.md 1-7).

The reference below is written from the equations, not from the model: per-head W_Q^i, W_K^i, W_V^i slices,
softmax(Q_i K_i^T / sqrt(d_k)) V_i for each head separately, Concat, W_O, residual + LayerNorm, FFN. It reads the
model's weights by name and must reproduce its hidden states to 1e-10 in float64.
"""

import math

import pytest
import torch

from hf_minitransformer import MiniTransformerModel

from .conftest import make_config


def layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


ACTIVATIONS = {
    "relu": lambda x: torch.where(x > 0, x, torch.zeros_like(x)),
    "gelu": lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
    "gelu_new": lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    "silu": lambda x: x / (1 + torch.exp(-x)),
}


def positional_encoding(num_positions, d_model):
    pe = torch.empty(num_positions, d_model, dtype=torch.float64)
    for pos in range(num_positions):
        for i in range(0, d_model, 2):
            angle = pos / 10000 ** (i / d_model)
            pe[pos, i] = math.sin(angle)
            if i + 1 < d_model:
                pe[pos, i + 1] = math.cos(angle)
    return pe


def rotate(x, theta_base=10000.0):
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


def reference_hidden_states(weights, config, tokens, pad_mask=None):
    """One sequence `tokens` (N,) -> (N, d_model); pad_mask (N,) with 0 for keys that must not be attended to."""
    d_model, h = config.hidden_size, config.num_attention_heads
    d_k = d_model // h
    n = tokens.shape[0]
    # 1. Data flow: X = embeddings (x sqrt(d_model), paper §3.4), plus positions.
    x = weights["embeddings.token_embeddings.weight"][tokens]
    if config.scale_embeddings:
        x = x * math.sqrt(d_model)
    if config.position_embedding_type == "sinusoidal":
        x = x + positional_encoding(n, d_model)
    elif config.position_embedding_type == "learned":
        x = x + weights["embeddings.position_embeddings.weight"][:n]

    for layer in range(config.num_hidden_layers):
        w = {k.split(f"layers.{layer}.", 1)[1]: v for k, v in weights.items() if k.startswith(f"layers.{layer}.")}

        def linear(inp, name):
            out = inp @ w[f"{name}.weight"].T
            return out + w[f"{name}.bias"] if f"{name}.bias" in w else out

        def attention(inp):
            heads = []
            for i in range(h):  # 7. each head has its own W_Q^i, W_K^i, W_V^i
                rows = slice(i * d_k, (i + 1) * d_k)

                def project(name):
                    out = inp @ w[f"self_attn.{name}.weight"][rows].T
                    bias = w.get(f"self_attn.{name}.bias")
                    return out + bias[rows] if bias is not None else out

                q, k, v = project("q_proj"), project("k_proj"), project("v_proj")  # 3. Q = X W_Q ...
                if config.position_embedding_type == "rotary":
                    q, k = rotate(q), rotate(k)
                scores = q @ k.T / math.sqrt(d_k)  # 4. Q K^T / sqrt(d_k), (N, N)
                if config.is_decoder:
                    scores = scores.masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf"))
                if pad_mask is not None:
                    scores = scores.masked_fill(~pad_mask.bool()[None, :], float("-inf"))
                heads.append(torch.softmax(scores, dim=-1) @ v)
            return linear(torch.cat(heads, dim=-1), "self_attn.o_proj")  # Concat(head_1..head_h) W_O

        def ffn(z):  # 6. FFN(Z) = act(Z W_1 + b_1) W_2 + b_2
            return linear(ACTIVATIONS[config.hidden_act](linear(z, "feed_forward.fc1")), "feed_forward.fc2")

        def norm(inp, name):
            return layer_norm(inp, w[f"{name}.weight"], w[f"{name}.bias"], config.layer_norm_eps)

        if config.layer_norm_position == "post":
            z = norm(x + attention(x), "attn_layer_norm")  # 2./5. residual, then LayerNorm
            x = norm(z + ffn(z), "ffn_layer_norm")
        else:
            x = x + attention(norm(x, "attn_layer_norm"))
            x = x + ffn(norm(x, "ffn_layer_norm"))
    if config.layer_norm_position == "pre":
        x = layer_norm(x, weights["final_layer_norm.weight"], weights["final_layer_norm.bias"], config.layer_norm_eps)
    return x


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


@pytest.mark.parametrize("is_decoder", [False, True])
def test_padding_mask_matches_reference(float64_default, is_decoder):
    config = make_config(is_decoder=is_decoder)
    model = MiniTransformerModel(config).eval()
    tokens = torch.randint(3, config.vocab_size, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])  # right padding: the second row has 4 real tokens
    with torch.no_grad():
        hidden = model(tokens, attention_mask=mask).last_hidden_state
    weights = {k: v.detach() for k, v in model.state_dict().items()}
    for b in range(2):
        expected = reference_hidden_states(weights, config, tokens[b], pad_mask=mask[b])
        real = mask[b].bool()
        torch.testing.assert_close(hidden[b][real], expected[real], rtol=0, atol=1e-10)
