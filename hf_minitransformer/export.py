"""ONNX export for generation, through transformers' own exporters, and the greedy loop that runs it.

transformers' `HfExporter.export_for_generation` runs `model.generate` once and exports the two forward passes it
captures: the prefill (the prompt) and one decoding step, each taking and returning the KV cache as tensors. This
module adds what running that export takes for this model:

- `export_for_generation`: the two components, with a dynamic cache or a static one (`static_cache_length`), and for
  the encoder-decoder a third, the encoder, which `generate` runs outside the forward passes it captures;
- `generate_greedy`: the greedy loop over the components in ONNX Runtime (the export's own runners), from the prompt
  to `max_new_tokens`, with each step's logits. transformers has no loop of its own for an exported model.

Needs the `onnx` extra (onnx, onnxscript, onnxruntime). The package itself never imports this module: the remote
code of a saved folder is the modeling file alone.
"""

import numpy as np
import torch
from transformers import GenerationConfig, PreTrainedModel
from transformers.exporters import ExportedModel, OnnxConfig, OnnxExporter


def export_for_generation(
    model: PreTrainedModel,
    sample_inputs: dict[str, torch.Tensor],
    static_cache_length: int | None = None,
    config: OnnxConfig | None = None,
) -> ExportedModel:
    """Export `model` (MiniTransformerForCausalLM or MiniTransformerForSeq2SeqLM) for greedy generation to ONNX.

    Args:
        sample_inputs: `generate` inputs to trace with: `input_ids` (batch, prompt), optionally `attention_mask` and
            `token_type_ids` (then the components take them too).
        static_cache_length: export against a static cache of this many positions (prompt + new tokens of a
            generation must fit); None: a dynamic cache. An encoder-decoder's static export also holds the source in
            a cache of the sample's source length: `generate_greedy` pads shorter sources to it, and refuses longer.
        config: the ONNX export settings; by default dynamic shapes (any batch, prompt and cache length).
    Returns:
        transformers' `ExportedModel` with components "prefill" and "decode" (and "encoder" for an encoder-decoder);
        `save_pretrained` writes them with the model config, `ExportedModel.from_pretrained` reads them back.
    """
    config = config or OnnxConfig(dynamic=True)
    exporter = OnnxExporter()
    generate_inputs = traceable_inputs(model, sample_inputs)
    # Compilation is off: the capture wraps the forward pass in code that torch.compile cannot trace, and this model
    # compiles a static cache's decoding step on the CPU too.
    generation_config = GenerationConfig(
        do_sample=False, pad_token_id=model.config.pad_token_id, eos_token_id=None, disable_compile=True,
        decoder_start_token_id=model.config.decoder_start_token_id,
        **(dict(cache_implementation="static", max_cache_len=static_cache_length) if static_cache_length else {}),
    )
    exported = exporter.export_for_generation(model, generate_inputs, config, generation_config=generation_config)
    if model.config.is_encoder_decoder:
        source = {name: value for name, value in generate_inputs.items() if not name.startswith("decoder_")}
        encoder = exporter.export(model.get_encoder(), source, config)
        exported.components["encoder"] = encoder.components["model"]
    return exported


def traceable_inputs(model: PreTrainedModel, sample_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`sample_inputs` as the capture needs them for graphs that take every input a generation can have."""
    inputs = dict(sample_inputs)
    input_ids = inputs["input_ids"]
    inputs.setdefault("attention_mask", torch.ones_like(input_ids))
    # generate() drops an all-ones mask, and a graph traced without one takes none: a padded first row keeps it an
    # input (padding on the left of a prompt, on the right of a source).
    if bool(inputs["attention_mask"].all()):
        pad = dict(input_ids=model.config.pad_token_id or 0, attention_mask=0, token_type_ids=0)
        for name, value in inputs.items():
            column = torch.cat([torch.full_like(value[:1, :1], pad[name]), value[1:, :1]])  # (batch, 1): row 0 pads
            inputs[name] = torch.cat((value, column) if model.config.is_encoder_decoder else (column, value), 1)
    if model.config.is_encoder_decoder:
        # Two decoder tokens before the captured step: with one, its cache's length would be traced as the constant 1
        # (torch.export fixes every dimension of size 1), and the decode graph would take no longer cache.
        start = torch.full((len(input_ids), 2), model.config.decoder_start_token_id)
        inputs.setdefault("decoder_input_ids", start)
    return inputs


def generate_greedy(
    exported: ExportedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 20,
    token_type_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Greedy decoding with the exported components on ONNX Runtime, as `model.generate(do_sample=False)` decodes.

    Args:
        input_ids, attention_mask: (batch, prompt) the prompt (left-padded) or, for an encoder-decoder, the source.
        token_type_ids: (batch, prompt) their segments, for components traced with them; as in `generate`, the new
            tokens of a causal LM take the prompt's last one, and an encoder-decoder's encoder alone reads them.
    Returns:
        the sequences as `generate` returns them (a causal LM's prompt and new tokens; an encoder-decoder's decoder
        start and new tokens), and the logits of each step, (batch, vocab).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    config = exported.config
    if config.is_encoder_decoder:
        source = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        source = fit_static_source(exported, source)
        attention_mask = source["attention_mask"]
        encoded = run_component(exported, "encoder", {}, **source)[0]
        fixed = {"attention_mask": attention_mask.numpy(), "encoder_outputs.last_hidden_state": encoded}
        tokens = torch.full((len(input_ids), 1), config.decoder_start_token_id)
        self_mask = torch.ones_like(tokens)  # the decoder's own tokens are never padding
    else:
        fixed, tokens, self_mask = {}, input_ids, attention_mask
    check_static_length(exported, tokens.shape[1] + max_new_tokens - 1)
    positions = (self_mask.cumsum(-1) - 1).clamp(min=0)
    cache: dict[str, np.ndarray] = {}
    step_logits, new, past = [], tokens, 0  # past: how many tokens the cache holds
    for step in range(max_new_tokens):
        name = "prefill" if step == 0 else "decode"
        inputs = step_inputs(exported, name, new, positions[:, -new.shape[1]:], self_mask, past)
        if token_type_ids is not None and not config.is_encoder_decoder:
            inputs["token_type_ids"] = token_type_ids if step == 0 else token_type_ids[:, -1:]
        logits = run_component(exported, name, cache, **fixed, **inputs)[0]
        step_logits.append(torch.from_numpy(logits[:, -1]))
        past += new.shape[1]
        new = step_logits[-1].argmax(-1, keepdim=True)
        tokens = torch.cat([tokens, new], 1)
        self_mask = torch.cat([self_mask, torch.ones_like(new)], 1)
        positions = torch.cat([positions, positions[:, -1:] + 1], 1)
    return tokens, step_logits


def check_static_length(exported: ExportedModel, fed_tokens: int):
    """A ValueError before the first step if a static cache cannot hold the tokens this generation feeds."""
    mask_name = "decoder_attention_mask" if exported.config.is_encoder_decoder else "attention_mask"
    traced = exported.components["decode"].metadata.kwargs.get(mask_name, {})
    if traced.get("rank") == 4 and fed_tokens > traced["shape"][-1]:
        raise ValueError(f"This static-cache export holds {traced['shape'][-1]} tokens; the prompt and max_new_tokens "
                         f"ask for {fed_tokens} (the last new token is not fed back): generate fewer, or export with "
                         "a larger static_cache_length.")


def fit_static_source(exported: ExportedModel, source: dict[str, torch.Tensor | None]) -> dict:
    """The source padded (on the right) to the length a static export holds it in: its cross-attention cache was
    traced with the sample's source length, which the graphs then fix."""
    if exported.components["decode"].metadata.kwargs.get("decoder_attention_mask", {}).get("rank") != 4:
        return source  # a dynamic cache: any source length
    length = exported.components["prefill"].metadata.kwargs["attention_mask"]["shape"][-1]
    given = source["input_ids"].shape[1]
    if given > length:
        raise ValueError(f"This static-cache export holds sources of up to {length} tokens (the length it was traced "
                         f"with), got {given}: export it with a sample source as long as the longest.")
    pads = dict(input_ids=exported.config.pad_token_id or 0, attention_mask=0, token_type_ids=0)
    return {name: value if value is None else torch.nn.functional.pad(value, (0, length - given), value=pads[name])
            for name, value in source.items()}


def step_inputs(exported: ExportedModel, name: str, new_tokens: torch.Tensor, positions: torch.Tensor,
                mask: torch.Tensor, past: int) -> dict[str, torch.Tensor]:
    """The inputs of one forward pass, in the form the component was traced with (read from its metadata)."""
    traced = exported.components[name].metadata.kwargs
    ids_name = "decoder_input_ids" if exported.config.is_encoder_decoder else "input_ids"
    inputs = {ids_name: new_tokens}
    if "position_ids" in traced:
        inputs["position_ids"] = positions
    mask_name = "decoder_attention_mask" if exported.config.is_encoder_decoder else "attention_mask"
    if traced.get(mask_name, {}).get("rank") == 4:
        # A static cache's graph takes the 4D boolean mask generate() builds for it: the query of cache slot
        # past + i sees every slot up to its own that holds a real token; the slots after them are empty.
        slots = traced[mask_name]["shape"][-1]
        real = torch.nn.functional.pad(mask.bool(), (0, slots - mask.shape[1]))  # (batch, slots)
        causal = torch.arange(slots)[None, :] <= past + torch.arange(new_tokens.shape[1])[:, None]  # (new, slots)
        inputs[mask_name] = (real[:, None, None, :] & causal[None, None]).contiguous()
    elif mask_name in traced:
        inputs[mask_name] = mask
    return inputs


def run_component(exported: ExportedModel, name: str, cache: dict[str, np.ndarray], **inputs) -> list[np.ndarray]:
    """Run one component on its ONNX Runtime session; the cache it returns replaces `cache`'s tensors.

    A graph takes the cache tensors as `input.<path>` and returns them as `output.<path>` (or `<path>` from the
    prefill, which starts from an empty cache): the loop keeps them by path, as ONNX Runtime arrays.
    """
    session = exported.runners[name].session
    feed = {}
    for spec in session.get_inputs():
        if spec.name.startswith("input."):
            path = spec.name.removeprefix("input.")
            # A static cache's layers count their tokens; before the prefill, none.
            feed[spec.name] = cache.get(path, np.zeros((), dtype=np.int64))
        elif inputs.get(spec.name) is None:
            raise ValueError(f"The {name!r} component was exported with `{spec.name}`: pass it.")
        else:
            value = inputs[spec.name]
            feed[spec.name] = value.numpy() if isinstance(value, torch.Tensor) else value
    outputs = session.run(None, feed)
    for spec, value in zip(session.get_outputs(), outputs):
        path = spec.name.removeprefix("output.")
        if path.startswith("cache."):
            cache[path] = value
    return outputs
