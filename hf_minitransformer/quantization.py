"""Int8 weights for CPU inference, through torchao (the `quant` extra: `pip install -e .[quant]`).

    from hf_minitransformer.quantization import quantize_int8
    model = quantize_int8(MiniTransformerForSeq2SeqLM.from_pretrained(folder).eval())
    model.generate(input_ids, max_new_tokens=32)

Not imported by the modeling file or the package: the exported trust_remote_code folder and every other user stay
free of torchao. torchao is PyTorch's maintained quantization library; `torch.ao.quantization.quantize_dynamic`,
the older route, is deprecated (its quantized tensors are to be removed, pytorch/pytorch#184982).
"""

from transformers import PreTrainedModel


def quantize_int8(model: PreTrainedModel) -> PreTrainedModel:
    """Quantizes every `nn.Linear` of `model` in place, output projection included, and returns it: int8 weights
    (one scale per output row) and activations quantized to int8 per token at run time (torchao's
    `Int8DynamicActivationInt8WeightConfig`). Embeddings, LayerNorms and attention stay float32.

    For inference in this process: the quantized model cannot train, and a tied output projection no longer shares
    its tensor with the token embeddings, so save the float model, not this one. `generate` keeps working, with the
    default cache and with `cache_implementation="static"`; the latter runs uncompiled (see below).

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
    # Our static-cache generate compiles the decoding step on the CPU; inductor's code for these int8 matmuls gave
    # different tokens from eager, and from one run to the next (torch 2.13, torchao 0.18), so decode uncompiled.
    if model.can_generate():
        model.generation_config.disable_compile = True
    return model
