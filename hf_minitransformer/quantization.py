"""Int8 weights for CPU inference, through torchao (the `quant` extra: `pip install -e .[quant]`).

    from hf_minitransformer.quantization import quantize_int8
    model = quantize_int8(MiniTransformerForSeq2SeqLM.from_pretrained(folder).eval())
    model.generate(input_ids, max_new_tokens=32, cache_implementation="static")  # compiled: the fast path

Not imported by the modeling file or the package: the exported trust_remote_code folder and every other user stay
free of torchao. torchao is PyTorch's maintained quantization library; `torch.ao.quantization.quantize_dynamic`,
the older route, is deprecated (its quantized tensors are to be removed, pytorch/pytorch#184982).
"""

import types

import torch
from transformers import PreTrainedModel


def quantize_int8(model: PreTrainedModel) -> PreTrainedModel:
    """Quantizes every `nn.Linear` of `model` in place, output projection included, and returns it: int8 weights
    (one scale per output row) and activations quantized to int8 per token at run time (torchao's
    `Int8DynamicActivationInt8WeightConfig`). Embeddings, LayerNorms and attention stay float32.

    For inference in this process: the quantized model cannot train, and a tied output projection no longer shares
    its tensor with the token embeddings, so save the float model, not this one. `generate` works with the default
    cache (uncompiled; no faster than float32 at batch 1) and with `cache_implementation="static"`, which compiles
    the decoding step on the CPU as for float32 and is where int8 pays: about twice the float32 tokens/s at
    opus-mt sizes (docs/benchmarks.md).

    Raises ImportError without torchao, ValueError for a model off the CPU or in training mode.
    """
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as error:
        raise ImportError("quantize_int8 needs torchao: pip install -e .[quant]") from error
    if model.device.type != "cpu":
        raise ValueError(f"quantize_int8 is the CPU inference route; got a model on {model.device}")
    if model.training:
        raise ValueError("quantize_int8 is for inference; got a model in training mode (call model.eval() first)")
    # Weight-only int8 (Int8WeightOnlyConfig) was about 3x slower than float32 on the CPU here (torchao 0.18): its
    # matmul dequantizes the weight on each call; the int8 x int8 matmul of dynamic activations is not.
    quantize_(model, Int8DynamicActivationInt8WeightConfig())  # its default filter: every nn.Linear
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.forward = types.MethodType(linear_on_rows, module)
    return model


def linear_on_rows(linear: torch.nn.Linear, hidden_states: torch.Tensor) -> torch.Tensor:
    """The quantized linear over (tokens, features) rows, reshaped back: inductor's code for torchao's int8 matmul
    returns garbage for a (1, 1, features) input, a decoding step at batch 1 (torch 2.13, torchao 0.18; (1, features)
    and (2, 3, features) are right), so the compiled static-cache step only ever gives it two dimensions."""
    rows = hidden_states.reshape(-1, hidden_states.shape[-1])
    return torch.nn.functional.linear(rows, linear.weight, linear.bias).reshape(*hidden_states.shape[:-1], -1)
