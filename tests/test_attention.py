import importlib.util

import pytest
import torch

from hf_minitransformer import MiniTransformerForCausalLM, MiniTransformerModel

from .conftest import make_config


def left_padded_batch(vocab_size):
    input_ids = torch.randint(3, vocab_size, (3, 8))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :3] = 0
    attention_mask[2, :5] = 0
    input_ids[attention_mask == 0] = 0
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids, attention_mask, position_ids


@pytest.mark.parametrize("is_decoder", [False, True])
@pytest.mark.parametrize("position_embedding_type", ["sinusoidal", "rotary"])
def test_eager_and_sdpa_agree_on_padded_batch(is_decoder, position_embedding_type):
    config = make_config(is_decoder=is_decoder, position_embedding_type=position_embedding_type)
    model = MiniTransformerModel(config).eval()
    input_ids, attention_mask, position_ids = left_padded_batch(config.vocab_size)
    outputs = {}
    for implementation in ("eager", "sdpa"):
        model.set_attn_implementation(implementation)
        assert model.config._attn_implementation == implementation
        with torch.no_grad():
            outputs[implementation] = model(input_ids, attention_mask=attention_mask, position_ids=position_ids)
    real = attention_mask.bool()
    torch.testing.assert_close(
        outputs["eager"].last_hidden_state[real], outputs["sdpa"].last_hidden_state[real], rtol=1e-4, atol=1e-4
    )


def test_sdpa_is_the_default_and_eager_can_be_chosen_at_load(tmp_path, tiny_config):
    model = MiniTransformerModel(tiny_config)
    assert model.config._attn_implementation == "sdpa"
    model.save_pretrained(tmp_path)
    eager = MiniTransformerModel.from_pretrained(tmp_path, attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"


def test_causal_model_never_looks_at_future_tokens():
    model = MiniTransformerForCausalLM(make_config()).eval()
    input_ids = torch.randint(3, 99, (2, 10))
    changed = input_ids.clone()
    changed[:, 6:] = torch.randint(3, 99, (2, 4))
    with torch.no_grad():
        logits, logits_changed = model(input_ids).logits, model(changed).logits
    torch.testing.assert_close(logits[:, :6], logits_changed[:, :6])
    assert not torch.allclose(logits[:, 6:], logits_changed[:, 6:])


def test_encoder_attends_to_the_whole_sequence():
    model = MiniTransformerModel(make_config()).eval()
    input_ids = torch.randint(3, 99, (1, 10))
    changed = input_ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 99
    with torch.no_grad():
        first, second = model(input_ids).last_hidden_state, model(changed).last_hidden_state
    assert not torch.allclose(first[:, 0], second[:, 0])


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_padding_does_not_change_real_tokens(implementation):
    model = MiniTransformerModel(make_config()).eval()
    model.set_attn_implementation(implementation)
    input_ids = torch.randint(3, 99, (1, 6))
    padded = torch.cat([input_ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 6 + [0] * 3])
    with torch.no_grad():
        alone = model(input_ids).last_hidden_state
        batched = model(padded, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(batched[:, :6], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_4d_mask_is_used_as_given(implementation):
    """A prepared 4D additive mask (batch, 1, q, kv) is passed through masking_utils untouched."""
    model = MiniTransformerModel(make_config()).eval()
    model.set_attn_implementation(implementation)
    input_ids = torch.randint(3, 99, (2, 6))
    mask_2d = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    allowed = mask_2d[:, None, None, :].expand(2, 1, 6, 6).bool()
    mask_4d = torch.zeros(2, 1, 6, 6).masked_fill(~allowed, torch.finfo(torch.float32).min)
    with torch.no_grad():
        from_2d = model(input_ids, attention_mask=mask_2d).last_hidden_state
        from_4d = model(input_ids, attention_mask=mask_4d).last_hidden_state
    torch.testing.assert_close(from_4d, from_2d, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="flash-attn is not installed")
def test_flash_attention_matches_sdpa_on_gpu():
    config = make_config(is_decoder=True)
    model = MiniTransformerModel(config).eval().to("cuda", torch.bfloat16)
    input_ids = torch.randint(3, 99, (2, 16), device="cuda")
    with torch.no_grad():
        sdpa = model(input_ids).last_hidden_state
        model.set_attn_implementation("flash_attention_2")
        flash = model(input_ids).last_hidden_state
    torch.testing.assert_close(flash.float(), sdpa.float(), rtol=2e-2, atol=2e-2)
