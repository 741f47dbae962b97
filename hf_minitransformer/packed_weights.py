"""The float32 output projection in oneDNN's packed layout, for batched greedy decoding on the CPU.

    from hf_minitransformer.packed_weights import pack_output_projection
    model = pack_output_projection(MiniTransformerForSeq2SeqLM.from_pretrained(folder).eval())
    model.generate(input_ids, max_new_tokens=32, cache_implementation="static")  # compiled, as without it

Why: torch's default float32 product with a (vocabulary, hidden) weight costs about as many times more as there are
rows once a decoding step has 2-16 of them (opus-mt's 58,101 x 512 projection, docs/benchmarks.md): the plain
layout is re-blocked on every call. Packed once into oneDNN's blocked layout, the same product at 8 rows costs
about 1.4x its 1-row time. Only the output projection: packing the 512-wide layers too made the step slower (each
packed call carries a fixed cost that their small products do not repay). Same float32 math; the packed copy is a
second tensor (119 MB at opus-mt sizes), so the projection no longer shares its weight with the embeddings.
"""

import types

import torch
from torch import nn
from transformers import PreTrainedModel

from .quantization import compiled_call_with_freezing, refuse_to_save


class PackedLinear(nn.Module):
    """`nn.Linear` whose float32 weight lives in oneDNN's blocked layout (`torch.ops.mkldnn._linear_pointwise`)."""

    def __init__(self, linear: nn.Linear, rows: int):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        # `rows` only hints the blocking; any number of rows runs. Not in the state dict (opaque tensor).
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
        self.register_buffer("packed_weight", packed, persistent=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        rows = hidden_states.reshape(-1, self.in_features)  # (tokens, in_features)
        output = torch.ops.mkldnn._linear_pointwise(rows, self.packed_weight, self.bias, "none", [], "")
        return output.reshape(*hidden_states.shape[:-1], self.out_features)


def pack_output_projection(model: PreTrainedModel, rows: int = 8) -> PreTrainedModel:
    """Replaces `model.lm_head` in place by a `PackedLinear` and returns the model, for inference in this process:
    the compiled static-cache step then runs with inductor's freezing (which oneDNN's packed op needs, as for
    quantize_int8), and `save_pretrained` refuses (save the model before packing).

    Raises ValueError for a model off the CPU, in training mode, or without a float32 `nn.Linear` lm_head."""
    if model.device.type != "cpu":
        raise ValueError(f"pack_output_projection is for CPU inference; got a model on {model.device}")
    if model.training:
        raise ValueError("pack_output_projection is for inference; got a model in training mode (call model.eval())")
    head = getattr(model, "lm_head", None)
    if not isinstance(head, nn.Linear) or head.weight.dtype != torch.float32:
        raise ValueError(f"pack_output_projection needs a float32 nn.Linear lm_head; got {type(head).__name__}")
    with torch.no_grad():
        model.lm_head = PackedLinear(head, rows)
    model.get_compiled_call = types.MethodType(compiled_call_with_freezing, model)
    model.save_pretrained = types.MethodType(refuse_to_save, model)
    return model
