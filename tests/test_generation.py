import pytest
import torch
from transformers import DynamicCache

from hf_minitransformer import MiniTransformerForCausalLM, MiniTransformerForSeq2SeqLM

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


def continue_generation(model, source, attention_mask, first, cache, **kwargs):
    """generate() again from `first.sequences` and a cache, as a user continues a returned generation."""
    if model.config.is_encoder_decoder:  # the source again; the sequences so far are the decoder's inputs
        return model.generate(source, attention_mask=attention_mask, decoder_input_ids=first.sequences, cache=cache,
                              **kwargs)
    new_tokens = first.sequences.shape[1] - source.shape[1]
    attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], new_tokens)], 1)
    return model.generate(first.sequences, attention_mask=attention_mask, cache=cache, **kwargs)


def self_attention_cache(cache):
    return [cache.self_attention_cache] if hasattr(cache, "self_attention_cache") else [cache]


GENERATE = dict(do_sample=False, return_dict_in_generate=True, output_logits=True, output_scores=True,
                eos_token_id=None, pad_token_id=0)


def left_padded_source() -> tuple[torch.Tensor, torch.Tensor]:
    source = torch.randint(3, 99, (2, 6))
    attention_mask = torch.ones_like(source)
    attention_mask[1, :2] = 0
    return source, attention_mask


@pytest.mark.parametrize("head", [MiniTransformerForCausalLM, MiniTransformerForSeq2SeqLM])
def test_greedy_generation_continues_from_its_returned_cache(head):
    model = head(make_config()).eval()
    source, attention_mask = left_padded_source()
    whole = model.generate(source, attention_mask=attention_mask, max_new_tokens=8, **GENERATE)
    first = model.generate(source, attention_mask=attention_mask, max_new_tokens=4, **GENERATE)
    second = continue_generation(model, source, attention_mask, first, first.cache, max_new_tokens=4, **GENERATE)
    assert torch.equal(second.sequences, whole.sequences)
    for continued, uninterrupted in zip(first.logits + second.logits, whole.logits, strict=True):
        torch.testing.assert_close(continued, uninterrupted, rtol=0, atol=0)
    caches = [(whole.cache, second.cache)]
    if model.config.is_encoder_decoder:
        caches = [(whole.cache.self_attention_cache, second.cache.self_attention_cache),
                  (whole.cache.cross_attention_cache, second.cache.cross_attention_cache)]
    for uninterrupted, continued in caches:
        for a, b in zip(uninterrupted.layers, continued.layers, strict=True):
            assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


@pytest.mark.parametrize("head", [MiniTransformerForCausalLM, MiniTransformerForSeq2SeqLM])
def test_beam_search_continues_from_a_returned_cache(head):
    # Beam search from the sequences so far gives the same beams whether the prefix comes from the returned cache
    # (grown to one row per beam with the Cache API, as generate() does not) or is computed again. Restarting an
    # interrupted beam search from its best sequence is another search: it dropped the other beams.
    model = head(make_config()).eval()
    source, attention_mask = left_padded_source()
    first = model.generate(source, attention_mask=attention_mask, max_new_tokens=4, **GENERATE)
    first.cache.batch_repeat_interleave(3)
    cached = continue_generation(model, source, attention_mask, first, first.cache, max_new_tokens=4, num_beams=3,
                                 **GENERATE)
    recomputed = continue_generation(model, source, attention_mask, first, None, max_new_tokens=4, num_beams=3,
                                     **GENERATE)
    assert torch.equal(cached.sequences, recomputed.sequences)
    torch.testing.assert_close(cached.sequences_scores, recomputed.sequences_scores, rtol=0, atol=1e-6)
