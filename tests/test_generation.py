import pytest
import torch
from transformers import DynamicCache

from hf_minitransformer import MiniTransformerForCausalLM

from .conftest import make_config


POSITIONS = ["sinusoidal", "learned", "rotary"]


def causal_lm(**overrides):
    return MiniTransformerForCausalLM(make_config(**overrides)).eval()


@pytest.mark.parametrize("position_embedding_type", POSITIONS)
def test_greedy_generate_same_tokens_with_and_without_cache(position_embedding_type):
    model = causal_lm(position_embedding_type=position_embedding_type)
    prompt = torch.randint(3, 99, (2, 5))
    kwargs = dict(max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    with_cache = model.generate(prompt, use_cache=True, **kwargs)
    without_cache = model.generate(prompt, use_cache=False, **kwargs)
    assert with_cache.shape == (2, 17)
    assert torch.equal(with_cache, without_cache)
    assert torch.equal(with_cache[:, :5], prompt)


@pytest.mark.parametrize("layer_norm_position", ["post", "pre"])
@pytest.mark.parametrize("position_embedding_type", POSITIONS)
def test_incremental_logits_with_cache_equal_full_forward(position_embedding_type, layer_norm_position):
    model = causal_lm(position_embedding_type=position_embedding_type, layer_norm_position=layer_norm_position)
    input_ids = torch.randint(3, 99, (2, 9))
    with torch.no_grad():
        full = model(input_ids).logits
        cache = DynamicCache(config=model.config)
        steps = []
        for t in range(input_ids.shape[1]):
            out = model(input_ids[:, t : t + 1], cache=cache, use_cache=True)
            cache = out.cache
            steps.append(out.logits)
    assert cache.get_seq_length() == 9
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("position_embedding_type", POSITIONS)
def test_incremental_logits_on_left_padded_batch(position_embedding_type, implementation):
    model = causal_lm(position_embedding_type=position_embedding_type)
    model.set_attn_implementation(implementation)
    input_ids = torch.randint(3, 99, (2, 8))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :3] = 0  # left padding, as for batched generation
    input_ids[attention_mask == 0] = 0
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full = model(input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        prefix = 5
        out = model(input_ids[:, :prefix], attention_mask=attention_mask[:, :prefix],
                    position_ids=position_ids[:, :prefix], use_cache=True)
        steps, cache = [out.logits], out.cache
        for t in range(prefix, 8):
            out = model(input_ids[:, t : t + 1], attention_mask=attention_mask[:, : t + 1],
                        position_ids=position_ids[:, t : t + 1], cache=cache, use_cache=True)
            steps.append(out.logits)
            cache = out.cache
    real = attention_mask.bool()
    torch.testing.assert_close(torch.cat(steps, dim=1)[real], full[real], rtol=1e-5, atol=1e-5)


def test_batched_left_padded_generate_matches_single_sequence_generate():
    """generate() derives position ids from the attention mask, so padding does not shift the positions."""
    model = causal_lm()
    prompt = torch.randint(3, 99, (1, 4))
    kwargs = dict(max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    alone = model.generate(prompt, **kwargs)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), prompt], dim=1)
    other = torch.randint(3, 99, (1, 7))
    batch = torch.cat([padded, other])
    mask = torch.cat([torch.tensor([[0, 0, 0, 1, 1, 1, 1]]), torch.ones(1, 7, dtype=torch.long)])
    batched = model.generate(batch, attention_mask=mask, **kwargs)
    assert torch.equal(batched[0, 3:], alone[0])


def test_past_key_values_is_accepted_as_the_deprecated_name():
    model = causal_lm()
    input_ids = torch.randint(3, 99, (1, 6))
    with torch.no_grad():
        first = model(input_ids[:, :5], use_cache=True)
        new = model(input_ids[:, 5:], cache=first.cache, use_cache=True).logits
    with torch.no_grad(), pytest.warns(FutureWarning):
        first = model(input_ids[:, :5], use_cache=True)
        old = model(input_ids[:, 5:], past_key_values=first.cache, use_cache=True).logits
    torch.testing.assert_close(old, new)


def test_generation_past_the_position_table_is_refused():
    model = causal_lm(max_position_embeddings=16)
    with pytest.raises(ValueError, match="max_position_embeddings=16"):
        model.generate(torch.randint(3, 99, (1, 10)), max_new_tokens=10, do_sample=False, eos_token_id=None)
