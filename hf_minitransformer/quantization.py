"""Int8 weights for CPU inference, on PyTorch's own oneDNN int8 matrix products (x86 CPUs; no extra package).

    from hf_minitransformer.quantization import quantize_int8
    model = quantize_int8(MiniTransformerForSeq2SeqLM.from_pretrained(folder).eval())
    model.generate(input_ids, max_new_tokens=32, cache_implementation="static")  # compiled: the fast path

Each `nn.Linear` becomes an `Int8Linear`: int8 weights with one scale per output row, packed once into oneDNN's
blocked layout (`torch.ops.onednn.qlinear_prepack`), and the activations quantized to int8 at run time with one
scale per token (symmetric, as torchao's dynamic int8 and CTranslate2 do). The product is
`torch.ops.onednn.qlinear_pointwise`, the kernel that PyTorch's x86 inductor quantization (PT2E) lowers to; calling
it from the module keeps `model.generate` the interface, where PT2E needs an exported graph. Inductor compiles that
op only with the packed weight as a graph constant, so the static-cache decoding step of a quantized model compiles
with inductor's freezing (`compiled_call_with_freezing`): the cache stays a graph input (the step writes it), the
weights and scales become constants.

Not imported by the modeling file or the package: the exported trust_remote_code folder stays as it was.
"""

import types
import warnings
from collections.abc import Callable

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, EncoderDecoderCache


# Inductor's lowering of the int8 product copies the weight zero points with torch.tensor(tensor), which warns at
# every compilation (torch 2.13, torch/_inductor/mkldnn_lowerings.py); the copy is right, the warning is noise.
warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning,
                        module="torch._inductor.mkldnn_lowerings")


class Int8Linear(nn.Module):
    """`nn.Linear` with int8 weights (symmetric, one scale per output row) in oneDNN's packed layout, and int8
    activations quantized per call (symmetric, one scale per token); float32 in and out."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        int8_weight = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # Packed once here: the kernel would otherwise reorder the weight on every call. Not in the state dict
        # (an opaque oneDNN tensor cannot be saved), which is why a quantized model refuses save_pretrained.
        self.register_buffer("packed_weight", torch.ops.onednn.qlinear_prepack(int8_weight, None), persistent=False)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero_point", torch.zeros(scale.shape, dtype=torch.long))
        # int8_matmul feeds the kernel activations + 128 as uint8; this takes the 128s back out of the products.
        self.register_buffer("offset_products", 128 * scale * int8_weight.sum(dim=1).float())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float().clone())

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and hidden_states.requires_grad:
            return NoBackward.apply(self, hidden_states)
        return int8_matmul(self, hidden_states)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights (oneDNN)"


def int8_matmul(linear: Int8Linear, hidden_states: torch.Tensor) -> torch.Tensor:
    """(..., in_features) float32 -> (..., out_features) float32: each row quantized to int8 with its own scale
    (symmetric, like the weights), the integer product by oneDNN, then both scales and the bias applied."""
    rows = hidden_states.reshape(-1, linear.in_features)  # (tokens, in_features)
    scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127  # (tokens, 1)
    # oneDNN's fast x86 path is uint8 x int8 (int8 x int8 fell to a reference kernel here, 2 s for the output
    # projection), so the int8 rows go in shifted by 128. Not as the kernel's zero point: with one it recomputed
    # its compensation on every call, twice the time of a 512 x 512 product; the shift's share of the integer sums,
    # 128 x each weight row's sum, is a constant subtracted after (float32 keeps it to ~1e-7 of the sums).
    shifted = (torch.round(rows / scale) + 128).to(torch.uint8)
    products = torch.ops.onednn.qlinear_pointwise(  # (tokens, out_features): integer sums times the weight scales
        shifted, 1.0, 0, linear.packed_weight, linear.weight_scale, linear.weight_zero_point, None, 1.0, 0,
        torch.float32, "none", [], ""
    )
    output = (products - linear.offset_products) * scale
    output = output if linear.bias is None else output + linear.bias
    return output.reshape(*hidden_states.shape[:-1], linear.out_features)


class SharedInt8Linear(Int8Linear):
    """An `Int8Linear` whose output several `Int8Columns` split (a self-attention layer's q, k and v, of one input).
    Eagerly it keeps the product of its last input until each part has taken its columns, so that the three
    projections quantize the input once and make one oneDNN call; compiled, inductor computes the one product the
    three ask for (with freezing, as `generate` compiles a quantized model's step)."""

    def __init__(self, linear: nn.Linear, parts: int):
        super().__init__(linear)
        self.parts = parts
        self.last = None  # (input, product, starts taken) of the last eager call

    def columns(self, hidden_states: torch.Tensor, start: int, end: int) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return self(hidden_states)[..., start:end]
        # By identity: the three projections get the same tensor, one after another, within one attention call.
        if self.last is None or self.last[0] is not hidden_states or start in self.last[2]:
            self.last = (hidden_states, self(hidden_states), set())
        _, product, taken = self.last
        taken.add(start)
        if len(taken) == self.parts:
            self.last = None  # every part has its columns: hold no activations between calls
        return product[..., start:end]


class Int8Columns(nn.Module):
    """One of several int8 projections of one input: its columns, `start` to `end`, of a `SharedInt8Linear`."""

    def __init__(self, shared: SharedInt8Linear, start: int, end: int):
        super().__init__()
        self.shared, self.start, self.end = shared, start, end

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.shared.columns(hidden_states, self.start, self.end)


def share_query_key_value_products(model: PreTrainedModel):
    """Turns the q, k and v projections of each self-attention layer (same input) into `Int8Columns` of one int8
    product. Cross-attention keeps three: its queries and its keys and values project different inputs."""
    from .modeling_minitransformer import MiniTransformerAttention

    for attention in list(model.modules()):  # a list: the loop replaces modules
        if not isinstance(attention, MiniTransformerAttention) or attention.is_cross_attention:
            continue
        projections = [attention.q_proj, attention.k_proj, attention.v_proj]
        fused = nn.Linear(attention.q_proj.in_features, sum(p.out_features for p in projections),
                          bias=attention.q_proj.bias is not None)
        with torch.no_grad():
            fused.weight.copy_(torch.cat([p.weight for p in projections]))
            if fused.bias is not None:
                fused.bias.copy_(torch.cat([p.bias for p in projections]))
        shared, start = SharedInt8Linear(fused, parts=len(projections)), 0
        for name, projection in zip(("q_proj", "k_proj", "v_proj"), projections):
            setattr(attention, name, Int8Columns(shared, start, start + projection.out_features))
            start += projection.out_features


class NoBackward(torch.autograd.Function):
    """The int8 product in a graph that records gradients; its backward refuses (the weights are int8 and packed:
    there is nothing to train, and oneDNN's kernel has no derivative)."""

    @staticmethod
    def forward(ctx, linear: Int8Linear, hidden_states: torch.Tensor) -> torch.Tensor:
        return int8_matmul(linear, hidden_states)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        raise RuntimeError(
            "backward through a model quantized by quantize_int8: its int8 weights are for inference only. Train "
            "(or fine-tune) the float32 model, then quantize a copy of it for inference."
        )


def quantize_int8(model: PreTrainedModel) -> PreTrainedModel:
    """Replaces every `nn.Linear` of `model` in place, output projection included, by an `Int8Linear`, and returns
    it; each self-attention layer's q, k and v become `Int8Columns` of one product. Embeddings,
    LayerNorms and attention stay float32.

    For inference in this process: backward through it raises, and so does `save_pretrained` (save the float
    model; a tied output projection no longer shares its tensor with the token embeddings). `generate` works with
    the default cache (eager) and with `cache_implementation="static"`, which compiles the decoding step on the CPU
    (with freezing, see the module docstring) and is the fast path (docs/benchmarks.md).

    Raises ValueError for a model off the CPU, in training mode, or already quantized; RuntimeError where this
    PyTorch build has no oneDNN int8 kernels (they are x86 ones).
    """
    if model.device.type != "cpu":
        raise ValueError(f"quantize_int8 is the CPU inference route; got a model on {model.device}")
    if model.training:
        raise ValueError("quantize_int8 is for inference; got a model in training mode (call model.eval() first)")
    already = sum(isinstance(module, Int8Linear) for module in model.modules())
    if already:
        raise ValueError(f"quantize_int8 got a model that is already quantized ({already} Int8Linear layers); "
                         "quantize the float32 model once")
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")):
        raise RuntimeError("quantize_int8 needs PyTorch's oneDNN int8 kernels (an x86 CPU build of torch)")
    share_query_key_value_products(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear(child))
    model.get_compiled_call = types.MethodType(compiled_call_with_freezing, model)
    model.save_pretrained = types.MethodType(refuse_to_save, model)
    return model


def compiled_call_with_freezing(model: PreTrainedModel, compile_config) -> Callable:
    """transformers' compiled forward (what `generate` calls for each decoding step of a static cache), run with
    inductor's freezing switched on: compilation happens inside the first call of each shape, so that is where the
    switch must hold. (`CompileConfig(options={"freezing": True})` did not reach inductor's freezing pass, torch
    2.13: the compile failed on the packed weight as it does without freezing.) With inductor's C++ wrapper too:
    the step's ~150 kernel and oneDNN calls are made from compiled C++ rather than a Python function, which cost
    tens of microseconds a step at batch 1 (int8: +4-9% tokens/s at batch 1 and 8, docs/benchmarks.md; each new
    shape compiles ~10 s longer).

    Freezing turns every tensor dynamo treats as a parameter into a constant of the compiled code, and that
    includes the static cache's tensors, which transformers marks as static addresses (for CUDA graphs); the next
    `generate` (a new cache) then ran on the first call's cache and indexed past its end. So the cache's tensors
    lose that mark before each step: they stay inputs of the compiled step."""
    compiled = type(model).get_compiled_call(model, compile_config)

    def call(*args, **kwargs):
        release_static_addresses(kwargs.get("cache"))
        with torch._inductor.config.patch(freezing=True, cpp_wrapper=True):
            return compiled(*args, **kwargs)

    return call


def release_static_addresses(cache: Cache | None):
    """Drops `torch._dynamo.mark_static_address`'s mark from the tensors of each layer of a transformers cache (an
    `EncoderDecoderCache` holds two caches)."""
    if cache is None:
        return
    parts = [cache]
    if isinstance(cache, EncoderDecoderCache):
        parts = [cache.self_attention_cache, cache.cross_attention_cache]
    for layer in (layer for part in parts for layer in part.layers):
        for name in ("keys", "values", "cumulative_length"):
            tensor = getattr(layer, name, None)
            if tensor is not None and hasattr(tensor, "_dynamo_static_input_type"):
                del tensor._dynamo_static_input_type


def refuse_to_save(model: PreTrainedModel, *args, **kwargs):
    raise ValueError(
        "save_pretrained of a model prepared for CPU inference (quantize_int8 or pack_output_projection): its packed "
        "weights are not in the state dict, so the folder would lack them. Save the float32 model, and prepare it "
        "again after loading it."
    )
