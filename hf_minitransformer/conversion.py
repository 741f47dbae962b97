"""Convert transformers checkpoints of Marian (opus-mt), GPT-2 and BERT into MiniTransformer models, same outputs.

`scripts/convert.py` is the command line around this module: it loads the source, calls `convert_model`, checks the
result with `compare_models`, and writes the folder. The modeling file never imports this module, so a converted
folder carries the same remote code as any other.

How each family maps onto config fields (Marian and GPT-2 need no new one):

* Marian: post-LN encoder-decoder -> `layer_norm_position="post"`; `scale_embedding` -> `scale_embeddings`; attention
  biases -> `attention_bias=True`; `swish` -> `hidden_act="silu"`; source, target and output embeddings shared ->
  `tie_word_embeddings=True`; `final_logits_bias` -> `lm_head.bias`.
* GPT-2: pre-LN with a final LayerNorm -> `layer_norm_position="pre"`; learned positions ->
  `position_embedding_type="learned"`; `gelu_new` -> `hidden_act="gelu_new"`; unscaled embeddings ->
  `scale_embeddings=False`; the tied output projection has no bias -> `lm_head.bias` = 0.
* BERT: post-LN encoder, learned positions, unscaled embeddings, attention biases, `gelu`, LayerNorm eps 1e-12, the
  MLM decoder bias -> `lm_head.bias`. Its token-type embeddings, embedding LayerNorm and MLM transform (Linear, act,
  LayerNorm) had no equivalent: they are the three config fields `type_vocab_size`, `embedding_layer_norm` and
  `masked_lm_transform`, off by default, so the paper's model builds no module for them and its forward only skips
  them (`is None` checks). BertModel's pooler (tanh Linear over [CLS], for NSP) is not carried over: its
  `last_hidden_state` is; sequence classification pools the first token (`classifier_pooling="first"`).

Where the layout differs but the function is the same, the weights are converted rather than a field added: a field
would put a second layout of the same function into the model (and its reference test) for good, while a conversion
is done once, here:

* Marian's sinusoidal table puts all sines before all cosines (column k is sin(pos w_k), column d/2 + k is
  cos(pos w_k)); ours interleaves them as the paper's §3.5 writes it (columns 2k, 2k + 1). A fixed permutation P of
  the d_model coordinates of the residual stream maps one onto the other, and every operation on that stream commutes
  with it: additions are elementwise, LayerNorm's mean and variance do not depend on the order of coordinates (its
  weight and bias are permuted with them), and a Linear that reads the stream sees the same product when its input
  columns are permuted too; one that writes to it gets its output rows (and bias) permuted. So the converted model
  permutes the token-embedding columns, the input side of q/k/v/fc1 (and of cross-attention's q/k/v, which read the
  permuted encoder output), the output side of o_proj/fc2, and every LayerNorm. The tied output projection is the
  embedding matrix itself, so its input side is permuted by the same stroke. Logits are unchanged; hidden states
  equal Marian's with their last dimension permuted: `ours = marian[..., marian_permutation(d_model)]`.
* GPT-2's `Conv1D` stores (in, out) weights, nn.Linear (out, in): transposed. Its fused `c_attn` holds W_Q, W_K, W_V
  side by side: split in three.

What cannot be converted exactly raises a ValueError naming the field and its value, before any weight is copied.
Training-only settings that have no field here (Marian's `activation_dropout`, layer drop, GPT-2's separate embedding
dropout) do not change outputs; `convert_config` returns them as notes, which the script prints.
"""

import copy

import torch
from torch import nn
from transformers import PreTrainedModel

from .configuration_minitransformer import MiniTransformerConfig
from .modeling_minitransformer import (
    MiniTransformerForCausalLM,
    MiniTransformerForMaskedLM,
    MiniTransformerForSeq2SeqLM,
    MiniTransformerModel,
)


FAMILIES = ("marian", "gpt2", "bert")
# Source activation name -> ours; anything else is refused. (transformers' "swish" is SiLU.)
ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_new", "silu": "silu", "swish": "silu"}
# Settings of legacy Marian/BART config.json files that transformers' Marian ignores; only their Marian values match.
MARIAN_FIXED = {
    "normalize_before": False,
    "normalize_embedding": False,
    "add_final_layer_norm": False,
    "static_position_embeddings": True,
    "add_bias_logits": False,
    "share_encoder_decoder_embeddings": True,
    "tie_word_embeddings": True,
}
GPT2_FIXED = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "add_cross_attention": False}
BERT_FIXED = {"is_decoder": False, "add_cross_attention": False, "position_embedding_type": "absolute"}


def _refuse(source_config, field: str, value, allowed: str):
    raise ValueError(
        f"Cannot convert {source_config.model_type} checkpoint exactly: `{field}={value!r}` ({allowed}). "
        "MiniTransformer has no equivalent, and a converted model would behave differently."
    )


def _activation(source_config, field: str) -> str:
    value = getattr(source_config, field)
    if value not in ACTIVATIONS:
        _refuse(source_config, field, value, f"supported: {', '.join(map(repr, ACTIVATIONS))}")
    return ACTIVATIONS[value]


def convert_config(source_config) -> tuple[MiniTransformerConfig, list[str]]:
    """The MiniTransformer config of a Marian or GPT-2 config, and notes on training-only settings not carried over.

    Raises ValueError, naming field and value, for any setting that would make the converted model compute something
    else.
    """
    model_type = getattr(source_config, "model_type", None)
    if model_type == "marian":
        return _marian_config(source_config)
    if model_type == "gpt2":
        return _gpt2_config(source_config)
    if model_type == "bert":
        return _bert_config(source_config)
    raise ValueError(f"Cannot convert model_type={model_type!r}; supported: {', '.join(map(repr, FAMILIES))}.")


def _marian_config(source) -> tuple[MiniTransformerConfig, list[str]]:
    for field, allowed in MARIAN_FIXED.items():
        value = getattr(source, field, allowed)
        if value != allowed:
            _refuse(source, field, value, f"only {allowed!r} converts")
    for encoder_field, decoder_field in (("encoder_attention_heads", "decoder_attention_heads"),
                                         ("encoder_ffn_dim", "decoder_ffn_dim"),
                                         ("vocab_size", "decoder_vocab_size")):
        if getattr(source, encoder_field) != getattr(source, decoder_field):
            _refuse(source, decoder_field, getattr(source, decoder_field),
                    f"must equal {encoder_field}={getattr(source, encoder_field)}: one value serves both stacks here")
    if source.d_model % 2:
        _refuse(source, "d_model", source.d_model, "must be even: the sinusoidal table pairs sin and cos columns")
    config = MiniTransformerConfig(
        vocab_size=source.vocab_size,
        hidden_size=source.d_model,
        num_hidden_layers=source.encoder_layers,
        decoder_layers=source.decoder_layers,
        num_attention_heads=source.encoder_attention_heads,
        intermediate_size=source.encoder_ffn_dim,
        max_position_embeddings=source.max_position_embeddings,
        hidden_act=_activation(source, "activation_function"),
        position_embedding_type="sinusoidal",
        layer_norm_position="post",
        is_encoder_decoder=True,
        scale_embeddings=source.scale_embedding,
        attention_bias=True,
        hidden_dropout_prob=float(source.dropout),
        attention_dropout=float(source.attention_dropout),
        layer_norm_eps=1e-5,  # Marian's nn.LayerNorm default
        initializer_range=source.init_std,
        pad_token_id=source.pad_token_id,
        bos_token_id=source.bos_token_id,
        eos_token_id=source.eos_token_id,
        decoder_start_token_id=source.decoder_start_token_id,
        tie_word_embeddings=True,
    )
    notes = [f"`{field}={getattr(source, field)}` is not carried over (training only; no such field here)"
             for field in ("activation_dropout", "encoder_layerdrop", "decoder_layerdrop") if getattr(source, field)]
    return config, notes


def _gpt2_config(source) -> tuple[MiniTransformerConfig, list[str]]:
    for field, allowed in GPT2_FIXED.items():
        value = getattr(source, field, allowed)
        if value != allowed:
            _refuse(source, field, value, f"only {allowed!r} converts")
    # `reorder_and_upcast_attn` only computes the attention scores in float32, as our eager attention does anyway.
    config = MiniTransformerConfig(
        vocab_size=source.vocab_size,
        hidden_size=source.n_embd,
        num_hidden_layers=source.n_layer,
        num_attention_heads=source.n_head,
        intermediate_size=source.n_inner or 4 * source.n_embd,
        max_position_embeddings=source.n_positions,
        hidden_act=_activation(source, "activation_function"),
        position_embedding_type="learned",
        layer_norm_position="pre",
        is_decoder=True,
        scale_embeddings=False,
        attention_bias=True,
        hidden_dropout_prob=float(source.resid_pdrop),
        attention_dropout=float(source.attn_pdrop),
        layer_norm_eps=source.layer_norm_epsilon,
        initializer_range=source.initializer_range,
        # GPT-2 has no pad token; ours must not invent one, since the embedding's padding row gets no gradient.
        pad_token_id=source.pad_token_id,
        bos_token_id=source.bos_token_id,
        eos_token_id=source.eos_token_id,
        tie_word_embeddings=source.tie_word_embeddings,
    )
    notes = []
    if source.embd_pdrop != source.resid_pdrop:
        notes.append(f"`embd_pdrop={source.embd_pdrop}` is not carried over: one dropout rate "
                     f"(`resid_pdrop={source.resid_pdrop}`) serves embeddings and sublayers here (training only)")
    return config, notes


def _bert_config(source) -> tuple[MiniTransformerConfig, list[str]]:
    for field, allowed in BERT_FIXED.items():
        value = getattr(source, field, allowed)
        if value != allowed:
            _refuse(source, field, value, f"only {allowed!r} converts")
    config = MiniTransformerConfig(
        vocab_size=source.vocab_size,
        hidden_size=source.hidden_size,
        num_hidden_layers=source.num_hidden_layers,
        num_attention_heads=source.num_attention_heads,
        intermediate_size=source.intermediate_size,
        max_position_embeddings=source.max_position_embeddings,
        hidden_act=_activation(source, "hidden_act"),
        position_embedding_type="learned",
        layer_norm_position="post",
        scale_embeddings=False,
        attention_bias=True,
        type_vocab_size=source.type_vocab_size,
        embedding_layer_norm=True,
        masked_lm_transform=True,
        hidden_dropout_prob=float(source.hidden_dropout_prob),
        attention_dropout=float(source.attention_probs_dropout_prob),
        layer_norm_eps=source.layer_norm_eps,
        initializer_range=source.initializer_range,
        classifier_pooling="first",
        classifier_dropout=source.classifier_dropout,
        pad_token_id=source.pad_token_id,
        bos_token_id=source.bos_token_id,
        eos_token_id=source.eos_token_id,
        tie_word_embeddings=source.tie_word_embeddings,
    )
    return config, []


def marian_permutation(dim: int) -> torch.Tensor:
    """Indices P with ours[..., i] = marian[..., P[i]]: our column 2k is Marian's sine column k, 2k + 1 its cosine
    column dim/2 + k."""
    half = torch.arange(dim // 2)
    return torch.stack((half, half + dim // 2), dim=1).flatten()


class _ResidualBasis:
    """How a weight touching the residual stream is re-indexed: by `perm` (Marian), or left as it is (None)."""

    def __init__(self, perm: torch.Tensor | None):
        self.perm = perm

    def read(self, weight: torch.Tensor) -> torch.Tensor:
        """Input side, (out, d_model) -> columns permuted."""
        return weight if self.perm is None else weight[:, self.perm]

    def write(self, tensor: torch.Tensor) -> torch.Tensor:
        """Output side, (d_model, ...) or (d_model,): rows permuted (weights, biases, LayerNorm parameters)."""
        return tensor if self.perm is None else tensor[self.perm]


def _copy(target: torch.Tensor, value: torch.Tensor, name: str):
    if target.shape != value.shape:
        raise ValueError(f"{name}: the source's shape {tuple(value.shape)} is not ours, {tuple(target.shape)}.")
    target.copy_(value)


def _copy_linear(target: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None, name: str):
    _copy(target.weight, weight, f"{name}.weight")
    if bias is not None:
        _copy(target.bias, bias, f"{name}.bias")


def _copy_layer_norm(target: nn.LayerNorm, source: nn.LayerNorm, basis: _ResidualBasis, name: str):
    _copy(target.weight, basis.write(source.weight), f"{name}.weight")
    _copy(target.bias, basis.write(source.bias), f"{name}.bias")


@torch.no_grad()
def convert_model(source: PreTrainedModel) -> tuple[PreTrainedModel, list[str]]:
    """A MiniTransformer model computing what `source` (MarianMTModel, GPT2LMHeadModel, BertForMaskedLM or BertModel)
    computes, in eval mode, with the source's generation defaults; and the notes of `convert_config`. It is built in
    torch's default dtype (float32 unless set otherwise), so under a float64 default its sinusoidal table is exact to
    float64."""
    config, notes = convert_config(source.config)
    source_type = source.config.model_type
    if source_type == "marian":
        target = MiniTransformerForSeq2SeqLM(config)
        _copy_marian(source, target)
    elif source_type == "gpt2":
        target = MiniTransformerForCausalLM(config)
        _copy_gpt2(source, target)
    else:
        has_mlm_head = hasattr(source, "cls")
        target = MiniTransformerForMaskedLM(config) if has_mlm_head else MiniTransformerModel(config)
        _copy_bert(source, target)
        if getattr(source, "pooler", None) is not None:
            notes.append("BertModel's pooler (tanh Linear over [CLS]) is not carried over; last_hidden_state is exact")
    if getattr(source, "generation_config", None) is not None:  # Marian's beams, max length, bad words
        target.generation_config = copy.deepcopy(source.generation_config)
    return target.eval(), notes


def _copy_marian(source: PreTrainedModel, target: MiniTransformerForSeq2SeqLM):
    basis = _ResidualBasis(marian_permutation(source.config.d_model))
    marian = source.get_encoder(), source.get_decoder()
    for ours, theirs, stack in zip((target.get_encoder(), target.get_decoder()), marian, ("encoder", "decoder")):
        _check_marian_positions(ours, theirs, basis, stack)
        for index, (layer, source_layer) in enumerate(zip(ours.layers, theirs.layers, strict=True)):
            name = f"{stack}.layers.{index}"
            _copy_attention(layer.self_attn, source_layer.self_attn, basis, f"{name}.self_attn")
            _copy_layer_norm(layer.attn_layer_norm, source_layer.self_attn_layer_norm, basis,
                             f"{name}.attn_layer_norm")
            if layer.cross_attn is not None:
                _copy_attention(layer.cross_attn, source_layer.encoder_attn, basis, f"{name}.cross_attn")
                _copy_layer_norm(layer.cross_attn_layer_norm, source_layer.encoder_attn_layer_norm, basis,
                                 f"{name}.cross_attn_layer_norm")
            _copy_linear(layer.feed_forward.fc1, basis.read(source_layer.fc1.weight), source_layer.fc1.bias,
                         f"{name}.fc1")
            _copy_linear(layer.feed_forward.fc2, basis.write(source_layer.fc2.weight),
                         basis.write(source_layer.fc2.bias), f"{name}.fc2")
            _copy_layer_norm(layer.ffn_layer_norm, source_layer.final_layer_norm, basis, f"{name}.ffn_layer_norm")
    # One matrix: source and target embeddings and the output projection are tied on both sides.
    _copy(target.get_input_embeddings().weight, basis.read(source.get_input_embeddings().weight), "embeddings")
    assert target.get_decoder().get_input_embeddings().weight is target.get_input_embeddings().weight
    assert target.lm_head.weight is target.get_input_embeddings().weight
    _copy(target.lm_head.bias, source.final_logits_bias[0], "final_logits_bias")


def _check_marian_positions(ours, theirs, basis: _ResidualBasis, stack: str):
    """Marian's table is a frozen weight that a checkpoint may carry: it must be the sinusoidal one that ours is."""
    table = basis.read(theirs.embed_positions.weight)
    difference = (table - ours.embeddings.position_encoding).abs().max().item()
    if difference > 1e-6:
        raise ValueError(
            f"{stack}.embed_positions.weight differs from the sinusoidal table by up to {difference:.3g} (allowed "
            "1e-6): this checkpoint's positions are not the standard ones, which MiniTransformer computes."
        )


def _copy_attention(target, source, basis: _ResidualBasis, name: str):
    for projection in ("q_proj", "k_proj", "v_proj"):
        source_linear = getattr(source, projection)
        _copy_linear(getattr(target, projection), basis.read(source_linear.weight), source_linear.bias,
                     f"{name}.{projection}")
    _copy_linear(target.o_proj, basis.write(source.out_proj.weight), basis.write(source.out_proj.bias),
                 f"{name}.o_proj")


def _copy_gpt2(source: PreTrainedModel, target: MiniTransformerForCausalLM):
    gpt2, ours = source.transformer, target.base_model
    basis = _ResidualBasis(None)
    _copy(ours.embeddings.token_embeddings.weight, gpt2.wte.weight, "wte")
    _copy(ours.embeddings.position_embeddings.weight, gpt2.wpe.weight, "wpe")
    for index, (layer, block) in enumerate(zip(ours.layers, gpt2.h, strict=True)):
        name = f"h.{index}"
        # Conv1D computes x @ W + b with W stored (in, out): nn.Linear wants W^T. c_attn is [W_Q | W_K | W_V].
        q_weight, k_weight, v_weight = block.attn.c_attn.weight.t().chunk(3, dim=0)
        q_bias, k_bias, v_bias = block.attn.c_attn.bias.chunk(3)
        attention = layer.self_attn
        _copy_linear(attention.q_proj, q_weight, q_bias, f"{name}.attn.c_attn[q]")
        _copy_linear(attention.k_proj, k_weight, k_bias, f"{name}.attn.c_attn[k]")
        _copy_linear(attention.v_proj, v_weight, v_bias, f"{name}.attn.c_attn[v]")
        _copy_linear(attention.o_proj, block.attn.c_proj.weight.t(), block.attn.c_proj.bias, f"{name}.attn.c_proj")
        _copy_layer_norm(layer.attn_layer_norm, block.ln_1, basis, f"{name}.ln_1")
        _copy_linear(layer.feed_forward.fc1, block.mlp.c_fc.weight.t(), block.mlp.c_fc.bias, f"{name}.mlp.c_fc")
        _copy_linear(layer.feed_forward.fc2, block.mlp.c_proj.weight.t(), block.mlp.c_proj.bias, f"{name}.mlp.c_proj")
        _copy_layer_norm(layer.ffn_layer_norm, block.ln_2, basis, f"{name}.ln_2")
    _copy_layer_norm(ours.final_layer_norm, gpt2.ln_f, basis, "ln_f")
    if not target.config.tie_word_embeddings:
        _copy(target.lm_head.weight, source.lm_head.weight, "lm_head")
    target.lm_head.bias.zero_()  # GPT-2's output projection has no bias


def _copy_bert(source: PreTrainedModel, target: PreTrainedModel):
    bert, ours = source.base_model, target.base_model
    basis = _ResidualBasis(None)
    _copy(ours.embeddings.token_embeddings.weight, bert.embeddings.word_embeddings.weight, "word_embeddings")
    _copy(ours.embeddings.position_embeddings.weight, bert.embeddings.position_embeddings.weight, "positions")
    _copy(ours.embeddings.token_type_embeddings.weight, bert.embeddings.token_type_embeddings.weight, "token types")
    _copy_layer_norm(ours.embeddings.layer_norm, bert.embeddings.LayerNorm, basis, "embeddings.LayerNorm")
    for index, (layer, block) in enumerate(zip(ours.layers, bert.encoder.layer, strict=True)):
        name = f"encoder.layer.{index}"
        attention = block.attention
        for projection, source_name in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
            linear = getattr(attention.self, source_name)
            _copy_linear(getattr(layer.self_attn, projection), linear.weight, linear.bias, f"{name}.{source_name}")
        dense = attention.output.dense
        _copy_linear(layer.self_attn.o_proj, dense.weight, dense.bias, f"{name}.attention.output.dense")
        _copy_layer_norm(layer.attn_layer_norm, attention.output.LayerNorm, basis, f"{name}.attention.output")
        dense = block.intermediate.dense
        _copy_linear(layer.feed_forward.fc1, dense.weight, dense.bias, f"{name}.intermediate.dense")
        _copy_linear(layer.feed_forward.fc2, block.output.dense.weight, block.output.dense.bias, f"{name}.output")
        _copy_layer_norm(layer.ffn_layer_norm, block.output.LayerNorm, basis, f"{name}.output.LayerNorm")
    if isinstance(target, MiniTransformerForMaskedLM):
        predictions = source.cls.predictions
        dense = predictions.transform.dense
        _copy_linear(target.transform.dense, dense.weight, dense.bias, "cls.predictions.transform.dense")
        _copy_layer_norm(target.transform.layer_norm, predictions.transform.LayerNorm, basis, "transform.LayerNorm")
        if not target.config.tie_word_embeddings:
            _copy(target.lm_head.weight, predictions.decoder.weight, "cls.predictions.decoder")
        _copy(target.lm_head.bias, predictions.decoder.bias, "cls.predictions.bias")


@torch.no_grad()
def compare_models(source: PreTrainedModel, target: PreTrainedModel, batches: list[dict[str, torch.Tensor]],
                   prompts: list[dict[str, torch.Tensor]], max_new_tokens: int = 20) -> dict[str, float | str]:
    """Run source and converted model side by side; returns the figures that decide whether the conversion is exact.

    `batches`: forward inputs (for an encoder-decoder, with `decoder_input_ids`); logits (for a bare model, the last
    hidden state) are compared at every position the (decoder) attention mask keeps. Hidden states are compared in the
    source's basis (Marian's permuted back). `prompts`: `generate` inputs, decoded greedily and with 4 beams by both
    (none for models that do not generate).
    """
    perm = marian_permutation(source.config.d_model) if source.config.model_type == "marian" else None
    figures = dict(hidden_states_max_abs_diff=0.0, positions=0)
    same_argmax = 0
    for batch in batches:
        ours, theirs = target(**batch, output_hidden_states=True), source(**batch, output_hidden_states=True)
        has_logits = getattr(theirs, "logits", None) is not None
        keep = batch.get("attention_mask")
        if "decoder_input_ids" in batch or keep is None:  # no decoder padding: every target position counts
            output = ours.logits if has_logits else ours.last_hidden_state
            keep = torch.ones(output.shape[:2], dtype=torch.bool)
        keep = keep.bool()
        figures["positions"] += keep.sum().item()
        if has_logits:
            difference = (ours.logits - theirs.logits)[keep].abs().max().item()
            figures["logits_max_abs_diff"] = max(figures.get("logits_max_abs_diff", 0.0), difference)
            same_argmax += (ours.logits.argmax(-1) == theirs.logits.argmax(-1))[keep].sum().item()
        if perm is not None:
            hidden_pairs = zip(ours.encoder_hidden_states + ours.decoder_hidden_states,
                               theirs.encoder_hidden_states + theirs.decoder_hidden_states, strict=True)
        else:
            hidden_pairs = zip(ours.hidden_states, theirs.hidden_states, strict=True)
        for mine, reference in hidden_pairs:
            if perm is None:  # padded positions of a single stack are not compared
                difference = (mine - reference)[keep]
            else:
                difference = mine - reference[..., perm]
            figures["hidden_states_max_abs_diff"] = max(figures["hidden_states_max_abs_diff"],
                                                        difference.abs().max().item())
    if "logits_max_abs_diff" in figures:
        figures["argmax_agreement"] = same_argmax / figures["positions"]
    for label, num_beams in (("greedy", 1), ("beam4", 4)):
        same = total = 0
        for prompt in prompts:
            # The length goes in as max_length, the field the sources' generation defaults set (Marian's 512): given
            # as max_new_tokens beside it, transformers warns on every call that both are set.
            length = max_new_tokens + (1 if source.config.is_encoder_decoder else prompt["input_ids"].shape[1])
            options = dict(max_length=length, num_beams=num_beams, do_sample=False)
            expected = source.generate(**prompt, **options)
            produced = target.generate(**prompt, **options)
            total += expected.shape[0]
            if produced.shape == expected.shape:
                same += (produced == expected).all(dim=-1).sum().item()
        if prompts:
            figures[f"{label}_identical_sequences"] = f"{same}/{total}"
    return figures


def conversion_is_exact(figures: dict[str, float | str], atol: float = 1e-4) -> bool:
    """The bar the script holds a conversion to: float32 logits within `atol` with the same argmax at every compared
    position (a bare model: its hidden states within `atol`), and identical greedy and beam-4 generations."""
    generations_equal = all(
        figures[key].split("/")[0] == figures[key].split("/")[1] for key in figures if key.endswith("_sequences")
    )
    if "logits_max_abs_diff" not in figures:
        return figures["hidden_states_max_abs_diff"] <= atol and generations_equal
    return figures["logits_max_abs_diff"] <= atol and figures["argmax_agreement"] == 1.0 and generations_equal


__all__ = ["FAMILIES", "compare_models", "conversion_is_exact", "convert_config", "convert_model",
           "marian_permutation"]
