"""ONNX export through transformers' own exporters (issue 22): every head exports and its graph computes what the model
computes; the causal LM and the encoder-decoder export for generation (dynamic and static cache), and their prefill and
decode graphs, run by hf_minitransformer.export's greedy loop on ONNX Runtime, give `model.generate`'s tokens with the
same logits (to 1e-4), token types included; a folder loaded as remote code (package not importable) exports too.

Each export traces and converts the model (tens of seconds on two cores): all slow. Without the `onnx` extra the file
is skipped.
"""

import json

import pytest
import torch


for _module in ("onnx", "onnxscript", "onnxruntime"):
    pytest.importorskip(_module, reason="the onnx extra is not installed (pip install -e .[onnx])")

from transformers.exporters import ExportedModel, OnnxConfig, OnnxExporter  # noqa: E402

import hf_minitransformer  # noqa: E402
from hf_minitransformer import MiniTransformerForCausalLM, MiniTransformerForSeq2SeqLM  # noqa: E402
from hf_minitransformer.export import export_for_generation, generate_greedy  # noqa: E402

from .conftest import make_config, run_python  # noqa: E402


pytestmark = pytest.mark.slow

HEADS = ["MiniTransformerModel", "MiniTransformerForMaskedLM", "MiniTransformerForCausalLM",
         "MiniTransformerForSequenceClassification", "MiniTransformerForTokenClassification",
         "MiniTransformerSeq2SeqModel", "MiniTransformerForSeq2SeqLM"]


def batch(size: int, length: int, encoder_decoder: bool, seed: int) -> dict[str, torch.Tensor]:
    """Ids, a padding mask (a prompt padded on the left, a source on the right) and segments 0 then 1."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, 99, (size, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    if encoder_decoder:
        attention_mask[-1, length - 2:] = 0
    else:
        attention_mask[-1, :2] = 0
    token_type_ids = (torch.arange(length) >= length // 2).long().expand(size, -1).contiguous()
    return dict(input_ids=input_ids.masked_fill(attention_mask == 0, 0), attention_mask=attention_mask,
                token_type_ids=token_type_ids)


@pytest.mark.parametrize("head", HEADS)
def test_every_head_exports_and_computes_what_the_model_computes(head):
    model = getattr(hf_minitransformer, head)(make_config(type_vocab_size=2, num_labels=3)).eval()
    encoder_decoder = model.config.is_encoder_decoder
    traced, other = batch(2, 6, encoder_decoder, seed=0), batch(3, 9, encoder_decoder, seed=1)
    for inputs in (traced, other):
        if encoder_decoder:
            inputs["decoder_input_ids"] = inputs["input_ids"][:, :4]
    exported = OnnxExporter().export(model, dict(traced), OnnxConfig(dynamic=True))
    # Another batch size and length than traced: the shapes are dynamic.
    with torch.no_grad():
        expected = model(**other)
    outputs = exported(**other)
    name = "last_hidden_state" if head.endswith("Model") else "logits"
    torch.testing.assert_close(outputs[name], expected[name], rtol=1e-4, atol=1e-4)


def greedy_generate_matches(model, exported, inputs: dict[str, torch.Tensor], new_tokens: int):
    """The exported components' greedy loop gives generate()'s tokens, and each step's logits to 1e-4."""
    with torch.no_grad():
        expected = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                                  pad_token_id=0, return_dict_in_generate=True, output_logits=True)
    tokens, logits = generate_greedy(exported, **inputs, max_new_tokens=new_tokens)
    assert torch.equal(tokens, expected.sequences)
    torch.testing.assert_close(torch.stack(logits), torch.stack(expected.logits), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("head", [MiniTransformerForCausalLM, MiniTransformerForSeq2SeqLM])
def test_exported_generation_gives_the_tokens_of_generate(head, cache, tmp_path):
    model = head(make_config(type_vocab_size=2)).eval()
    encoder_decoder = model.config.is_encoder_decoder
    # A static encoder-decoder export holds the source in a cache of the traced length: a longer sample than used.
    exported = export_for_generation(model, batch(2, 9, encoder_decoder, seed=0),
                                     static_cache_length=32 if cache == "static" else None)
    assert set(exported.components) == {"prefill", "decode"} | ({"encoder"} if encoder_decoder else set())
    # Saved and read back from its files, as a deployment would: another batch size, prompt and segments.
    exported.save_pretrained(tmp_path)
    loaded = ExportedModel.from_pretrained(tmp_path)
    inputs = batch(3, 7, encoder_decoder, seed=1)
    greedy_generate_matches(model, loaded, inputs, new_tokens=8)
    if cache == "static":  # more tokens than its 32 positions: refused before the first step
        with pytest.raises(ValueError, match="This static-cache export holds 32 tokens; .* ask for 40"):
            generate_greedy(loaded, **inputs, max_new_tokens=40 if encoder_decoder else 34)


REMOTE_CODE_EXPORT = """
import json
import torch
import transformers
from transformers import GenerationConfig
from transformers.exporters import OnnxConfig, OnnxExporter

folders, work = json.loads(sys.argv[1]), sys.argv[2]
for name, folder in folders.items():
    auto = transformers.AutoModelForSeq2SeqLM if name == "seq2seq" else transformers.AutoModelForCausalLM
    model = auto.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    inputs = torch.load(f"{work}/{name}-traced.pt")
    exporter = OnnxExporter()
    # transformers' API alone: the capture's generate() must not compile (this model compiles a static cache's step
    # on the CPU), and the padded sample keeps the attention mask an input of the graphs.
    config = GenerationConfig(do_sample=False, eos_token_id=None, pad_token_id=0, disable_compile=True,
                              decoder_start_token_id=model.config.decoder_start_token_id)
    if model.config.is_encoder_decoder:  # two decoder tokens, or the decode graph's cache length is traced as 1
        inputs["decoder_input_ids"] = torch.full((len(inputs["input_ids"]), 2), model.config.decoder_start_token_id)
    exported = exporter.export_for_generation(model, inputs, OnnxConfig(dynamic=True), generation_config=config)
    if model.config.is_encoder_decoder:
        inputs.pop("decoder_input_ids")
        encoder = exporter.export(model.get_encoder(), dict(inputs), OnnxConfig(dynamic=True))
        exported.components["encoder"] = encoder.components["model"]
    exported.save_pretrained(f"{work}/{name}-onnx")
print(sorted(name for name, module in sys.modules.items() if name.startswith("hf_minitransformer") and module))
"""


def test_a_folder_loaded_as_remote_code_exports_for_generation(tmp_path):
    models, folders = {}, {}
    for name, head in (("causal", MiniTransformerForCausalLM), ("seq2seq", MiniTransformerForSeq2SeqLM)):
        models[name] = head(make_config(type_vocab_size=2)).eval()
        folders[name] = str(tmp_path / name)
        models[name].save_pretrained(folders[name])
        torch.save(batch(2, 5, models[name].config.is_encoder_decoder, seed=0), tmp_path / f"{name}-traced.pt")
    result = run_python(REMOTE_CODE_EXPORT, tmp_path, json.dumps(folders), str(tmp_path))
    assert result.stdout.strip().splitlines()[-1] == "[]"  # the package was never imported there
    for name, model in models.items():
        exported = ExportedModel.from_pretrained(tmp_path / f"{name}-onnx")
        greedy_generate_matches(model, exported, batch(3, 7, model.config.is_encoder_decoder, seed=1), new_tokens=6)
