"""The source document's walkthrough of the Transformer, computed on a real model: every stage of one forward pass.

The document follows one sentence through the model: X (n x d_model) -> X + PE -> per head Q_i = X W_Q^i,
K_i = X W_K^i, V_i = X W_V^i -> Q_i K_i^T / sqrt(d_k) -> softmax -> head_i -> Concat(head_1..head_h) W_O ->
Z = LayerNorm(X + MultiHead(X)) -> FFN(Z) = ReLU(Z W_1 + b_1) W_2 + b_2 -> LayerNorm(Z + FFN(Z)), and in the decoder
masked self-attention and cross-attention whose K and V come from the encoder output. `trace` runs one forward pass
of any MiniTransformer head and returns each of those tensors, named and with its symbol.

Nothing is recomputed: forward hooks on the modules record what they compute, and the attention itself runs through
an attention function registered with transformers' `AttentionInterface` ("walkthrough"), which calls the model's
own eager attention and records its inputs (Q_i, K_i, V_i after any rotation), its weights and its per-head output.
The model is switched to it with `set_attn_implementation` for the pass and switched back afterwards. The scaled
scores are the one value eager attention keeps to itself: they are formed from the recorded Q and K exactly as eager
attention forms them (matmul, scale, add the mask), and the tests check that their softmax is the recorded weights.

The modeling file does not import this module, so models loaded through remote code trace the same way.
"""

import dataclasses
import sys
from collections.abc import Callable

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel, PreTrainedTokenizerBase
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface


ATTENTION_NAME = "walkthrough"


@dataclasses.dataclass
class Stage:
    """One tensor of the data flow: where it sits, what the document calls it, and its value (batch dimension
    dropped)."""

    name: str  # e.g. "encoder.layer0.self_attn.scores"
    title: str  # what the document calls this step
    symbol: str  # the document's formula or symbol
    dims: tuple[str, ...]  # the document's name of each dimension, e.g. ("h", "n", "d_k")
    tensor: torch.Tensor
    stack: str = ""  # "encoder", "decoder", or "" for the single stack of an encoder or decoder-only model
    layer: int | None = None
    kind: str = ""  # "self_attn", "masked_self_attn", "cross_attn", "ffn", "embeddings", "output", ...


@dataclasses.dataclass
class Walkthrough:
    """Every stage of one forward pass, in the order the document follows them."""

    stages: list[Stage]
    tokens: dict[str, list[str]]  # the tokens each stack read ("input"; or "source" and "target")
    sizes: dict[str, int]  # the document's sizes: n (and m), d_model, h, d_k, d_ff, N (layers), vocab
    logits: torch.Tensor  # (positions, vocab) of the model's own output
    last_hidden_state: torch.Tensor  # (positions, d_model): the last stack's output, which the head projects
    # Where the model's prediction is read: the last position for a causal LM or a decoder (the token after the
    # input), the first mask token (else the last position) for a masked LM (the token at that position).
    prediction_position: int = -1
    predicts: str = "the token after the last one"  # what the probabilities at prediction_position are about

    def __getitem__(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"No stage {name!r}; stages are named like {self.stages[0].name!r}.")

    def names(self) -> list[str]:
        return [stage.name for stage in self.stages]


# --- the recording attention function ---------------------------------------------------------------------------

_RECORDERS: list[Callable] = []  # the active trace's callback; a list, so nested traces are refused clearly


def walkthrough_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own `eager_attention_forward`, plus a record of Q, K, V, the scaled and masked scores, the weights
    and the per-head outputs for the trace in progress."""
    eager = sys.modules[type(module).__module__].eager_attention_forward
    attn_output, attn_weights = eager(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    if _RECORDERS:
        with torch.no_grad():
            # Eager attention's first two steps, on the same tensors: Q K^T / sqrt(d_k) + mask.
            scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (batch, heads, q_len, kv_len)
            if attention_mask is not None:
                scores = scores + attention_mask
        _RECORDERS[-1](module, query, key, value, scores, attention_mask is not None, attn_weights, attn_output)
    return attn_output, attn_weights


AttentionInterface.register(ATTENTION_NAME, walkthrough_attention)
# Masks are built per attention implementation: this one takes eager's (additive, 0 or dtype min). Without it,
# `masking_utils` would build no mask at all for an implementation it does not know.
AttentionMaskInterface.register(ATTENTION_NAME, ALL_MASK_ATTENTION_FUNCTIONS["eager"])


# --- tracing ----------------------------------------------------------------------------------------------------

def trace(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    target: str | None = None,
) -> Walkthrough:
    """Run `model` once on `text` (the source; and `target` as decoder input for an encoder-decoder) and return every
    stage of its data flow.

    Args:
        model: any MiniTransformer head with a language-model output (masked, causal or seq2seq), loaded with any
            attention implementation; it runs in eval mode under eager attention for this pass and is left as it was.
        tokenizer: the model's tokenizer.
        text: the input text; for an encoder-decoder the source.
        target: encoder-decoder only: the target text; the decoder reads it shifted right behind the start token
            (teacher forcing). Without it the decoder reads the start token alone.

    Returns:
        A `Walkthrough` whose stages hold tensors of the single sequence (batch dimension removed).
    """
    if not text:
        raise ValueError("text must be a non-empty string, got an empty one.")
    config = model.config
    if target is not None and not config.is_encoder_decoder:
        raise ValueError(f"target is for an encoder-decoder model; {type(model).__name__} reads one text. Got "
                         f"target={target!r}.")
    if _RECORDERS:
        raise RuntimeError("A walkthrough trace is already running; traces cannot be nested.")
    inputs, tokens = _model_inputs(model, tokenizer, text, target)
    recorder = _Recorder(model)
    # Each sub-model (an encoder-decoder's two stacks) may have been given its own implementation: all are restored.
    previous = [(module, module.config._attn_implementation) for module in model.modules()
                if isinstance(module, PreTrainedModel)]
    was_training = model.training
    model.set_attn_implementation(ATTENTION_NAME)
    model.eval()
    _RECORDERS.append(recorder.record_attention)
    handles = recorder.attach()
    try:
        with torch.no_grad():
            outputs = model(**inputs)
    finally:
        _RECORDERS.pop()
        for handle in handles:
            handle.remove()
        for module, implementation in previous:
            if module.config._attn_implementation != implementation:
                module.set_attn_implementation(implementation)
        model.train(was_training)
    walkthrough = recorder.walkthrough(outputs.logits[0], tokens)
    if not (config.is_decoder or config.is_encoder_decoder):  # a masked LM predicts the token at a position
        masks = (inputs["input_ids"][0] == tokenizer.mask_token_id).nonzero() if tokenizer.mask_token else []
        position = int(masks[0, 0]) if len(masks) else len(tokens["input"]) - 1
        walkthrough.prediction_position = position
        walkthrough.predicts = f"the token at position {position} ({tokens['input'][position]!r})"
    return walkthrough


def _model_inputs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, text: str, target: str | None
                  ) -> tuple[dict, dict[str, list[str]]]:
    device = model.device
    input_ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
    if input_ids.shape[1] == 0:
        raise ValueError(f"text {text!r} has no tokens.")
    if not model.config.is_encoder_decoder:
        return {"input_ids": input_ids}, {"input": _token_strings(tokenizer, input_ids[0])}
    target_ids = []
    if target is not None:
        target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    start = model.config.decoder_start_token_id
    # Teacher forcing as in training: the decoder reads (start, y_1, .., y_m-1) ... and here also y_m, so that the
    # last position predicts what follows the whole target.
    decoder_input_ids = torch.tensor([[start, *target_ids]], device=device)
    tokens = {"source": _token_strings(tokenizer, input_ids[0]), "target": _token_strings(tokenizer,
                                                                                         decoder_input_ids[0])}
    return {"input_ids": input_ids, "decoder_input_ids": decoder_input_ids}, tokens


def _token_strings(tokenizer: PreTrainedTokenizerBase, ids: torch.Tensor) -> list[str]:
    """Each token as the text it stands for (a byte-level "Ġx" reads " x")."""
    return [tokenizer.convert_tokens_to_string([token]) for token in tokenizer.convert_ids_to_tokens(ids.tolist())]


class _Recorder:
    """Hooks on one model's modules, and the stages they record, in call order."""

    def __init__(self, model: PreTrainedModel):
        self.model = model
        self.config = model.config
        self.stacks = _stacks(model)  # [(stack name, MiniTransformerModel)]
        self.records: list[Stage] = []
        self.stack_outputs: dict[str, torch.Tensor] = {}
        # attention module -> (stack, layer index, kind)
        self.attention_modules: dict[nn.Module, tuple[str, int, str]] = {}
        for stack_name, stack in self.stacks:
            causal = stack.config.is_decoder
            for index, layer in enumerate(stack.layers):
                self.attention_modules[layer.self_attn] = (stack_name, index,
                                                           "masked_self_attn" if causal else "self_attn")
                if getattr(layer, "cross_attn", None) is not None:
                    self.attention_modules[layer.cross_attn] = (stack_name, index, "cross_attn")

    def length_name(self, stack: str) -> str:
        return "m" if stack == "decoder" else "n"

    def add(self, stack: str, layer: int | None, kind: str, short: str, title: str, symbol: str,
            dims: tuple[str, ...], tensor: torch.Tensor):
        prefix = ".".join(part for part in (stack, None if layer is None else f"layer{layer}", kind) if part)
        self.records.append(Stage(f"{prefix}.{short}", title, symbol, dims, tensor.detach()[0].clone(), stack,
                                  layer, kind))

    # --- hooks ---

    def attach(self) -> list:
        handles = []
        for stack_name, stack in self.stacks:
            handles.append(stack.register_forward_pre_hook(self._stack_in(stack_name), with_kwargs=True))
            handles.append(stack.embeddings.register_forward_pre_hook(self._embeddings_in(stack_name),
                                                                      with_kwargs=True))
            handles.append(stack.embeddings.register_forward_hook(self._embeddings_out(stack_name)))
            for index, layer in enumerate(stack.layers):
                handles += self._attach_layer(stack_name, index, layer)
            handles.append(stack.register_forward_hook(self._stack_out(stack_name)))
        return handles

    def _attach_layer(self, stack: str, index: int, layer: nn.Module) -> list:
        pre = self.config.layer_norm_position == "pre"
        handles = []
        attentions = [("self_attn", layer.self_attn, layer.attn_layer_norm)]
        if getattr(layer, "cross_attn", None) is not None:
            attentions.append(("cross_attn", layer.cross_attn, layer.cross_attn_layer_norm))
        for _, attention, norm in attentions:
            kind = self.attention_modules[attention][2]
            handles.append(attention.register_forward_hook(self._output_hook(
                stack, index, kind, "multihead", "Concat(heads) W_O", "MultiHead(X) = Concat(head_1, ..., head_h) W_O",
                (self.length_name(stack), "d_model"), pick=0)))
            if pre:
                title, symbol = "LayerNorm before the sub-layer (pre-LN)", "LayerNorm(X)"
            elif kind == "cross_attn":
                title, symbol = "Add & Norm", "LayerNorm(Z + MultiHead(Q = Z, K = V = encoder output))"
            else:
                title, symbol = "Add & Norm", "Z = LayerNorm(X + MultiHead(X))"
            handles.append(norm.register_forward_hook(self._output_hook(
                stack, index, kind, "add_norm", title, symbol, (self.length_name(stack), "d_model"))))
        handles.append(layer.feed_forward.fc2.register_forward_pre_hook(self._input_hook(
            stack, index, "ffn", "hidden", "FFN hidden layer", "ReLU(Z W_1 + b_1)"
            if self.config.hidden_act == "relu" else f"{self.config.hidden_act}(Z W_1 + b_1)",
            (self.length_name(stack), "d_ff"))))
        handles.append(layer.feed_forward.register_forward_hook(self._output_hook(
            stack, index, "ffn", "output", "FFN output", "FFN(Z) = act(Z W_1 + b_1) W_2 + b_2",
            (self.length_name(stack), "d_model"))))
        if not pre:
            handles.append(layer.ffn_layer_norm.register_forward_hook(self._output_hook(
                stack, index, "ffn", "add_norm", "Add & Norm", "LayerNorm(Z + FFN(Z))",
                (self.length_name(stack), "d_model"))))
        handles.append(layer.register_forward_hook(self._output_hook(
            stack, index, "", "output", "Layer output", "X for the next layer", (self.length_name(stack), "d_model"))))
        return handles

    def _output_hook(self, stack, layer, kind, short, title, symbol, dims, pick: int | None = None):
        def hook(module, args, output):
            tensor = output[pick] if pick is not None else output
            self.add(stack, layer, kind, short, title, symbol, dims, tensor)
        return hook

    def _input_hook(self, stack, layer, kind, short, title, symbol, dims):
        def hook(module, args):
            self.add(stack, layer, kind, short, title, symbol, dims, args[0])
        return hook

    def _stack_in(self, stack: str):
        def hook(module, args, kwargs):
            input_ids = args[0] if args else kwargs.get("input_ids")
            if input_ids is not None:
                self.add(stack, None, "embeddings", "ids", "Token ids", "tokens", (self.length_name(stack),),
                         input_ids)
        return hook

    def _embeddings_in(self, stack: str):
        embeddings = dict(self.stacks)[stack].embeddings
        n = self.length_name(stack)

        def hook(module, args, kwargs):
            inputs_embeds = args[0] if args else kwargs["inputs_embeds"]
            position_ids = args[1] if len(args) > 1 else kwargs.get("position_ids")
            scale = getattr(embeddings, "embedding_scale", 1.0)
            self.add(stack, None, "embeddings", "tokens", "Token embeddings x sqrt(d_model)",
                     "X = Embedding(tokens) * sqrt(d_model)", (n, "d_model"), inputs_embeds * scale)
            position_type = self.config.position_embedding_type
            if position_ids is None or position_type == "rotary":
                return
            if position_type == "sinusoidal":
                table = embeddings.position_encoding[position_ids].to(inputs_embeds.dtype)
                title = "Positional encoding (sinusoidal)"
            else:
                table = embeddings.position_embeddings(position_ids)
                title = "Positional embeddings (learned)"
            self.add(stack, None, "embeddings", "positions", title, "PE", (n, "d_model"),
                     table.expand_as(inputs_embeds))
        return hook

    def _embeddings_out(self, stack: str):
        symbol = "X (rotary positions act on Q and K)" if self.config.position_embedding_type == "rotary" else "X + PE"
        return self._output_hook(stack, None, "embeddings", "sum", "Input of the first layer", symbol,
                                 (self.length_name(stack), "d_model"))

    def _stack_out(self, stack: str):
        def hook(module, args, output):
            self.stack_outputs[stack] = output.last_hidden_state[0].detach().clone()
        return hook

    def record_attention(self, module, query, key, value, scores, masked, weights, attn_output):
        if module not in self.attention_modules:
            raise RuntimeError(f"walkthrough attention called by a module outside the traced model: {module!r}")
        stack, layer, kind = self.attention_modules[module]
        q_len = self.length_name(stack)
        kv_len = "n" if kind == "cross_attn" else q_len
        if kind == "cross_attn":
            names = ("Q_i = Z W_Q^i", "K_i = (encoder output) W_K^i", "V_i = (encoder output) W_V^i")
        else:
            names = ("Q_i = X W_Q^i", "K_i = X W_K^i", "V_i = X W_V^i")
        for short, tensor, symbol, length in (("Q", query, names[0], q_len), ("K", key, names[1], kv_len),
                                              ("V", value, names[2], kv_len)):
            self.add(stack, layer, kind, short, f"{short} of each head", symbol, ("h", length, "d_k"), tensor)
        mask_note = {"masked_self_attn": " + causal mask"}.get(kind, " + padding mask") if masked else ""
        self.add(stack, layer, kind, "scores", "Scaled scores" + (" (masked)" if masked else ""),
                 f"Q_i K_i^T / sqrt(d_k){mask_note}", ("h", q_len, kv_len), scores)
        self.add(stack, layer, kind, "weights", "Attention weights", "softmax(Q_i K_i^T / sqrt(d_k))",
                 ("h", q_len, kv_len), weights)
        self.add(stack, layer, kind, "heads", "Head outputs", "head_i = softmax(...) V_i", ("h", q_len, "d_k"),
                 attn_output.transpose(1, 2))  # eager returns (batch, q_len, heads, d_k)

    # --- the result ---

    def walkthrough(self, logits: torch.Tensor, tokens: dict[str, list[str]]) -> Walkthrough:
        # The hooks fire in the order the forward pass runs, which is the document's: embeddings, then per layer
        # Q, K, V, scores, weights, heads (inside attention), MultiHead, Add & Norm, the FFN, the layer output.
        stages = list(self.records)
        last_stack = self.stacks[-1][0]
        last_hidden_state = self.stack_outputs[last_stack]
        length = self.length_name(last_stack)
        stages.append(Stage(f"{last_stack + '.' if last_stack else ''}final.hidden", "Final hidden states",
                            "last layer output", (length, "d_model"), last_hidden_state, last_stack, None, "output"))
        stages.append(Stage("logits", "Logits", "hidden W_vocab + b", (length, "vocab"), logits, last_stack, None,
                            "output"))
        stages.append(Stage("probabilities", "Next-token probabilities", "softmax(logits)", (length, "vocab"),
                            torch.softmax(logits.float(), dim=-1), last_stack, None, "output"))
        config = self.config
        sizes = {"n": len(tokens.get("source", tokens.get("input"))), "d_model": config.hidden_size,
                 "h": config.num_attention_heads, "d_k": config.head_dim, "d_ff": config.intermediate_size,
                 "N": config.num_hidden_layers, "vocab": logits.shape[-1]}
        if "target" in tokens:
            sizes["m"] = len(tokens["target"])
            sizes["N_decoder"] = getattr(config, "decoder_layers", config.num_hidden_layers)
        return Walkthrough(stages, tokens, sizes, logits, last_hidden_state)


def _stacks(model: PreTrainedModel) -> list[tuple[str, nn.Module]]:
    """The model's Transformer stacks with their names: ("encoder", ...), ("decoder", ...) for an encoder-decoder,
    ("", body) otherwise. Reached through `get_encoder()`/`get_decoder()` and the base model, not attribute paths."""
    if model.config.is_encoder_decoder:
        return [("encoder", model.get_encoder()), ("decoder", model.get_decoder())]
    return [("", model.base_model)]


def top_predictions(walkthrough: Walkthrough, tokenizer: PreTrainedTokenizerBase, position: int | None = None,
                    k: int = 5) -> list[tuple[str, float]]:
    """The `k` most probable tokens at `position` (default: `walkthrough.prediction_position`), with probabilities."""
    position = walkthrough.prediction_position if position is None else position
    probabilities = walkthrough["probabilities"].tensor[position]
    values, ids = probabilities.topk(min(k, probabilities.numel()))
    return [(_token_strings(tokenizer, ids[i : i + 1])[0], float(values[i])) for i in range(len(ids))]


__all__ = ["ATTENTION_NAME", "Stage", "Walkthrough", "trace", "top_predictions", "walkthrough_attention"]
