import inspect

import pytest
import torch
import transformers
from transformers import DynamicCache, EncoderDecoderCache, GenerationMixin

from hf_minitransformer import (
    MiniTransformerForCausalLM,
    MiniTransformerForSeq2SeqLM,
    MiniTransformerModel,
    MiniTransformerSeq2SeqModel,
)

from .conftest import make_config, twin_reading_segment_1_as_0


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


# --- every input of the base model reaches generate() (issue 22) ----------------------------------------------------
# transformers' rule for a model family: a head names in its signature every input its base model takes, and
# generate() passes each through (prefill, decoding steps, static cache, beam expansion). Below, each input of the two
# base models is generated with, through the head that generates from it, in each decoding mode.

GENERATING_HEADS = [MiniTransformerForCausalLM, MiniTransformerForSeq2SeqLM]
MODES = {"greedy": {}, "static cache": dict(cache_implementation="static", disable_compile=True),
         "beam": dict(num_beams=2)}
# Inputs of the decoder stack that the encoder-decoder computes itself: no caller of generate() gives them.
CROSS_ATTENTION_INPUTS = {"encoder_hidden_states", "encoder_attention_mask"}
# The decoder's prompt goes in as tokens: generate() feeds the decoder tokens, and refuses these (tested below).
TEACHER_FORCING_INPUTS = {"decoder_inputs_embeds"}


def base_model_inputs(model_class) -> set[str]:
    return set(inspect.signature(model_class.forward).parameters) - {"self", "kwargs"}


def causal_case(name: str, model, input_ids, attention_mask):
    """(model, generate inputs) pairs that must generate the same new tokens, for the base model's input `name`."""
    plain = dict(input_ids=input_ids, attention_mask=attention_mask)
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    if name in ("input_ids", "attention_mask"):  # a left-padded row generates what it generates alone
        return (model, dict(input_ids=input_ids[1:, 2:])), (model, dict(plain)), slice(1, 2)
    if name == "position_ids":  # explicit positions continue as the mask's would
        return (model, dict(plain, position_ids=positions)), (model, plain), slice(None)
    if name == "token_type_ids":
        ones = torch.ones_like(input_ids)
        return (model, dict(plain, token_type_ids=ones)), (twin_reading_segment_1_as_0(model), plain), slice(None)
    if name == "inputs_embeds":
        embeds = dict(inputs_embeds=model.get_input_embeddings()(input_ids), attention_mask=attention_mask)
        return (model, embeds), (model, plain), slice(None)
    if name == "cache":
        return (model, dict(plain, cache=DynamicCache(config=model.config))), (model, plain), slice(None)
    if name == "use_cache":
        return (model, dict(plain, use_cache=False)), (model, plain), slice(None)
    raise AssertionError(f"no generation case for the base model's input {name!r}: add one")


def seq2seq_case(name: str, model, input_ids, attention_mask):
    plain = dict(input_ids=input_ids, attention_mask=attention_mask)
    if name in ("input_ids", "attention_mask"):  # a source padded (on the right) translates as it does alone
        right_padded = dict(input_ids=input_ids.flip(1), attention_mask=attention_mask.flip(1))
        return (model, dict(input_ids=input_ids.flip(1)[1:, :4])), (model, right_padded), slice(1, 2)
    if name in ("decoder_input_ids", "decoder_attention_mask"):  # a forced decoder prefix continues generation
        start = model.generate(**plain, max_new_tokens=2, do_sample=False, eos_token_id=None, pad_token_id=0)
        prefix = dict(plain, decoder_input_ids=start, max_new_tokens=3)  # the same 5 tokens after the start
        if name == "decoder_attention_mask":
            prefix["decoder_attention_mask"] = torch.ones_like(start)
        return (model, prefix), (model, plain), slice(None)
    if name == "encoder_outputs":
        with torch.no_grad():
            encoded = model.get_encoder()(input_ids, attention_mask=attention_mask)
        return (model, dict(plain, encoder_outputs=encoded)), (model, plain), slice(None)
    if name == "cache":
        empty = EncoderDecoderCache(DynamicCache(config=model.config), DynamicCache(config=model.config))
        return (model, dict(plain, cache=empty)), (model, plain), slice(None)
    if name == "inputs_embeds":
        embeds = dict(inputs_embeds=model.get_input_embeddings()(input_ids), attention_mask=attention_mask)
        return (model, embeds), (model, plain), slice(None)
    if name == "use_cache":
        return (model, dict(plain, use_cache=False)), (model, plain), slice(None)
    if name == "token_type_ids":
        ones = torch.ones_like(input_ids)
        return (model, dict(plain, token_type_ids=ones)), (twin_reading_segment_1_as_0(model), plain), slice(None)
    raise AssertionError(f"no generation case for the base model's input {name!r}: add one")


CASES = {
    MiniTransformerForCausalLM: (MiniTransformerModel, causal_case, CROSS_ATTENTION_INPUTS),
    MiniTransformerForSeq2SeqLM: (MiniTransformerSeq2SeqModel, seq2seq_case, TEACHER_FORCING_INPUTS),
}


def generation_cases() -> list:
    return [pytest.param(head, name, id=f"{head.__name__.removeprefix('MiniTransformerFor')}-{name}")
            for head, (base, _, left_out) in CASES.items() for name in sorted(base_model_inputs(base) - left_out)]


@pytest.mark.parametrize("head", GENERATING_HEADS)
def test_the_cases_below_cover_every_input_of_the_base_model(head):
    base, make_case, left_out = CASES[head]
    model = head(make_config(type_vocab_size=2)).eval()
    input_ids, attention_mask = left_padded_source()
    for name in base_model_inputs(base) - left_out:
        make_case(name, model, input_ids, attention_mask)  # raises for an input without a case
    # The inputs generate() never takes really are the base model's, still.
    assert left_out <= base_model_inputs(base)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("head, name", generation_cases())
def test_generate_with_each_input_of_the_base_model(head, name, mode):
    # Type ids 1 need a second segment; the other inputs run on the same model.
    model = head(make_config(type_vocab_size=2)).eval()
    _, make_case, _ = CASES[head]
    input_ids, attention_mask = left_padded_source()
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)
    if mode == "static cache" and name in ("use_cache", "cache"):
        pytest.skip("a caller's own cache, or none, is exclusive with cache_implementation='static'")
    if mode == "beam" and name.startswith("decoder_"):
        pytest.skip("a forced prefix of greedy tokens continues the greedy search, not a beam search")
    (model_a, inputs_a), (model_b, inputs_b), rows = make_case(name, model, input_ids, attention_mask)
    kwargs = dict(max_new_tokens=5, do_sample=False, eos_token_id=None, pad_token_id=0, return_dict_in_generate=True,
                  output_logits=True, **MODES[mode])
    a = model_a.generate(**{**kwargs, **inputs_a})
    b = model_b.generate(**{**kwargs, **inputs_b})
    # The last 5 tokens: a causal LM returns the prompt first, an encoder-decoder its decoder's start (and prefix).
    assert torch.equal(a.sequences[:, -5:], b.sequences[rows, -5:])
    # Tokens of a random model often agree anyway: the logits of each step (every beam's) must too.
    beams = MODES[mode].get("num_beams", 1)
    beam_rows = slice((rows.start or 0) * beams, rows.stop and rows.stop * beams)
    steps = min(len(a.logits), len(b.logits))
    torch.testing.assert_close(torch.stack(a.logits[-steps:]), torch.stack(b.logits[-steps:])[:, beam_rows])


def test_generate_refuses_decoder_inputs_embeds_clearly():
    model = MiniTransformerForSeq2SeqLM(make_config()).eval()
    with pytest.raises(ValueError, match="generate\\(\\) feeds the decoder its own tokens"):
        model.generate(torch.randint(3, 99, (1, 4)), decoder_inputs_embeds=torch.zeros(1, 1, 32), max_new_tokens=2)


@pytest.mark.parametrize("head", GENERATING_HEADS)
def test_prepare_inputs_for_generation_keeps_generation_mixins_signature(head):
    # generate() and its callers (assisted decoding, transformers' own tests) pass `input_ids` by name: for an
    # encoder-decoder these are the decoder's sequences so far, as for BART.
    model = head(make_config()).eval()
    ours = list(inspect.signature(model.prepare_inputs_for_generation).parameters)
    theirs = list(inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters)[1:]
    assert ours[0] == "input_ids" and ours[:-1] == theirs[: len(ours) - 1] and ours[-1] == "kwargs"
    input_ids = torch.randint(3, 99, (2, 3))
    extra = dict(output_attentions=True, custom_argument="value", numeric_argument=42)
    inputs = model.prepare_inputs_for_generation(input_ids=input_ids, position_ids=torch.arange(3).expand(2, 3),
                                                 **extra)
    assert torch.equal(inputs["decoder_input_ids" if model.config.is_encoder_decoder else "input_ids"], input_ids)
    assert {key: inputs[key] for key in extra} == extra


def bert_tokenizer() -> transformers.BertTokenizer:
    """A WordPiece tokenizer of BERT's kind, which returns token_type_ids with every text."""
    words = ["the", "cat", "sat", "on", "mat", "a", "dog"]
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    return transformers.BertTokenizer(vocab=vocab)


@pytest.mark.parametrize("type_vocab_size", [0, 2])
@pytest.mark.parametrize("head", GENERATING_HEADS)
def test_generate_takes_what_a_bert_tokenizer_returns(head, type_vocab_size, tmp_path):
    tokenizer = bert_tokenizer()
    model = head(make_config(vocab_size=len(tokenizer), type_vocab_size=type_vocab_size)).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = getattr(transformers, "AutoModelForSeq2SeqLM" if head is MiniTransformerForSeq2SeqLM
                    else "AutoModelForCausalLM").from_pretrained(tmp_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    inputs = tokenizer(["the cat sat on the mat", "a dog"], padding=True, return_tensors="pt")
    assert "token_type_ids" in inputs and not inputs["token_type_ids"].any()
    kwargs = dict(max_new_tokens=4, do_sample=False, eos_token_id=None, pad_token_id=0)
    with_types = model.generate(**inputs, **kwargs)
    inputs.pop("token_type_ids")
    # One segment: the ids a tokenizer gives a single text are all 0, which every model reads as no token types.
    assert torch.equal(with_types, model.generate(**inputs, **kwargs))


@pytest.mark.parametrize("head", GENERATING_HEADS)
def test_an_empty_prompt_is_refused_before_generation_starts(head):
    model = head(make_config()).eval()
    forward_calls = []
    model.register_forward_pre_hook(lambda *args: forward_calls.append(1))
    for shape in ((1, 0), (2, 0)):
        empty = torch.zeros(shape, dtype=torch.long)
        with pytest.raises(ValueError, match=rf"input_ids of shape \({shape[0]}, 0\), no tokens"):
            model.generate(empty, attention_mask=torch.ones_like(empty), max_new_tokens=3)
    assert not forward_calls
    with pytest.raises(ValueError, match=r"input_ids has shape \(1, 0\): no tokens"):
        model(torch.zeros(1, 0, dtype=torch.long), decoder_input_ids=torch.ones(1, 1, dtype=torch.long)) \
            if model.config.is_encoder_decoder else model(torch.zeros(1, 0, dtype=torch.long))


def test_text_generation_pipeline_starts_an_empty_prompt_from_bos(tmp_path):
    # transformers' own rule for this pipeline: an empty prompt generates from bos_token_id.
    tokenizer = bert_tokenizer()
    model = MiniTransformerForCausalLM(make_config(vocab_size=len(tokenizer), bos_token_id=2)).eval()
    generator = transformers.pipeline("text-generation", model=model, tokenizer=tokenizer)
    kwargs = dict(max_new_tokens=4, do_sample=False)
    text = generator("", add_special_tokens=False, **kwargs)[0]["generated_text"]
    expected = model.generate(torch.tensor([[2]]), **kwargs)[0, 1:]
    assert text == tokenizer.decode(expected, skip_special_tokens=True)
