"""hf_minitransformer.quantization: int8 weights for CPU inference (torchao, the `quant` extra)."""

import sys

import pytest
import torch

from hf_minitransformer import MiniTransformerForSeq2SeqLM
from hf_minitransformer.quantization import quantize_int8

from .conftest import make_config


# The tiny model's logits reach about 0.4; int8 per-row weights and per-token activations moved them by 0.003 here.
LOGIT_TOLERANCE = 0.02


def seq2seq_pair() -> tuple[MiniTransformerForSeq2SeqLM, MiniTransformerForSeq2SeqLM]:
    """A float32 tiny encoder-decoder and an int8 copy of the same weights."""
    model = MiniTransformerForSeq2SeqLM(make_config()).eval()
    copy = MiniTransformerForSeq2SeqLM(make_config()).eval()
    copy.load_state_dict(model.state_dict())
    return model, quantize_int8(copy)


def test_int8_logits_stay_close_to_float32():
    pytest.importorskip("torchao")
    model, quantized = seq2seq_pair()
    linears = [module for module in quantized.modules() if isinstance(module, torch.nn.Linear)]
    assert len(linears) > 10 and all(module.weight.qdata.dtype == torch.int8 for module in linears)
    assert quantized.get_input_embeddings().weight.dtype == torch.float32
    source = torch.randint(3, 99, (2, 7))
    decoder_input_ids = torch.randint(3, 99, (2, 5))
    with torch.no_grad():
        expected = model(input_ids=source, decoder_input_ids=decoder_input_ids).logits
        logits = quantized(input_ids=source, decoder_input_ids=decoder_input_ids).logits
    difference = (logits - expected).abs().max().item()
    assert 0 < difference < LOGIT_TOLERANCE  # above 0: the weights really changed


@pytest.mark.parametrize("cache", [None, "static"])
def test_int8_generate_gives_the_float32_tokens(cache):
    pytest.importorskip("torchao")
    model, quantized = seq2seq_pair()
    source = torch.randint(3, 99, (1, 7))
    kwargs = dict(max_new_tokens=6, do_sample=False, eos_token_id=None, cache_implementation=cache)
    # Static: our models compile the decoding step on the CPU, so this is inductor's int8 code, which returned
    # garbage at batch 1 until quantize_int8 gave it (tokens, features) rows.
    tokens = quantized.generate(source, **kwargs)
    assert tokens.shape == (1, 7)
    # Greedy argmax can flip where two logits are within the quantization error; on this seed none are.
    assert torch.equal(tokens, model.generate(source, **kwargs))


def test_missing_torchao_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)  # makes `import torchao...` raise ImportError
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    model = MiniTransformerForSeq2SeqLM(make_config()).eval()
    with pytest.raises(ImportError, match=r"pip install -e \.\[quant\]"):
        quantize_int8(model)


def test_training_mode_is_refused():
    pytest.importorskip("torchao")
    model = MiniTransformerForSeq2SeqLM(make_config())
    with pytest.raises(ValueError, match="training mode"):
        quantize_int8(model)
