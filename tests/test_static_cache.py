"""Static cache, full-graph compilation and host-sync-free decoding steps (issue 12)."""

import copy

import pytest
import torch
from torch._dynamo.eval_frame import _debug_get_cache_entry_list
from transformers import EncoderDecoderCache, StaticCache

from hf_minitransformer import MiniTransformerForCausalLM, MiniTransformerForSeq2SeqLM
from hf_minitransformer.modeling_minitransformer import check_in_range, checking_guards_once

from .conftest import make_config


HEADS = [MiniTransformerForCausalLM, MiniTransformerForSeq2SeqLM]
GREEDY = dict(max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)


def left_padded_prompt() -> tuple[torch.Tensor, torch.Tensor]:
    input_ids = torch.randint(3, 99, (2, 6))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :2] = 0
    return input_ids.masked_fill(attention_mask == 0, 0), attention_mask


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("head", HEADS)
def test_static_cache_generates_the_dynamic_cache_tokens(head, num_beams):
    model = head(make_config()).eval()
    input_ids, attention_mask = left_padded_prompt()
    kwargs = dict(attention_mask=attention_mask, num_beams=num_beams, **GREEDY)
    dynamic = model.generate(input_ids, **kwargs)
    # The eager static cache here; its compiled decoding is test_static_cache_generate_compiles_on_the_cpu.
    static = model.generate(input_ids, cache_implementation="static", disable_compile=True, **kwargs)
    assert torch.equal(static, dynamic)


@pytest.mark.parametrize("position_embedding_type", ["learned", "rotary"])
def test_static_cache_tokens_with_other_positions(position_embedding_type):
    model = MiniTransformerForCausalLM(make_config(position_embedding_type=position_embedding_type)).eval()
    input_ids, attention_mask = left_padded_prompt()
    dynamic = model.generate(input_ids, attention_mask=attention_mask, **GREEDY)
    static = model.generate(input_ids, attention_mask=attention_mask, cache_implementation="static",
                            disable_compile=True, **GREEDY)
    assert torch.equal(static, dynamic)


@pytest.mark.parametrize("head, position_embedding_type", [(MiniTransformerForCausalLM, "sinusoidal"),
                                                           (MiniTransformerForCausalLM, "learned"),
                                                           (MiniTransformerForSeq2SeqLM, "sinusoidal")])
def test_static_cache_generation_past_the_position_table_is_refused_before_it_starts(head, position_embedding_type):
    # Its decoding steps run compiled, without the model's position check: past the table inductor's kernel failed
    # with "index out of bounds" after the compilation. The lengths are known before the prefill.
    model = head(make_config(max_position_embeddings=16, position_embedding_type=position_embedding_type)).eval()
    forward_calls = []
    model.register_forward_pre_hook(lambda *args: forward_calls.append(1))
    max_new_tokens = 10 if head is MiniTransformerForCausalLM else 20
    message = r"would reach position 18, past the last of the 16 .* \(max_position_embeddings=16\)"
    if head is MiniTransformerForSeq2SeqLM:
        message = message.replace("18", "19")
    kwargs = {**GREEDY, "max_new_tokens": max_new_tokens}
    with pytest.raises(ValueError, match=message):
        model.generate(torch.randint(3, 99, (1, 10)), cache_implementation="static", **kwargs)
    assert not forward_calls


def test_the_static_cache_length_check_counts_positions_not_padding():
    # Left padding does not use positions: a row padded by 4 of a 10-column prompt ends at position 5. The other row
    # ends at 9, so 7 new tokens (positions up to 15) fit a 16-position table and 8 do not.
    model = MiniTransformerForCausalLM(make_config(max_position_embeddings=16)).eval()
    input_ids = torch.randint(3, 99, (2, 10))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :4] = 0
    kwargs = dict(attention_mask=attention_mask, do_sample=False, eos_token_id=None, pad_token_id=0)
    dynamic = model.generate(input_ids, max_new_tokens=7, **kwargs)
    static = model.generate(input_ids, max_new_tokens=7, cache_implementation="static", disable_compile=True, **kwargs)
    assert torch.equal(static, dynamic)
    with pytest.raises(ValueError, match="Ask for 1 fewer new tokens"):
        model.generate(input_ids, max_new_tokens=8, cache_implementation="static", **kwargs)
    # Rotary positions have no table: no limit.
    rotary = MiniTransformerForCausalLM(make_config(max_position_embeddings=16, position_embedding_type="rotary"))
    generated = rotary.eval().generate(input_ids, max_new_tokens=12, cache_implementation="static",
                                       disable_compile=True, **kwargs)
    assert generated.shape == (2, 22)


def static_cache_for(model, max_cache_len: int, source_len: int):
    """The static cache generate() builds: for an encoder-decoder, its cross-attention part holds the source."""
    if model.config.is_encoder_decoder:
        decoder_config = model.model.decoder.config
        return EncoderDecoderCache(StaticCache(config=decoder_config, max_cache_len=max_cache_len),
                                   StaticCache(config=decoder_config, max_cache_len=source_len))
    return StaticCache(config=model.config, max_cache_len=max_cache_len)


@pytest.mark.parametrize("head", HEADS)
def test_forward_compiles_to_one_graph(head):
    # fullgraph=True raises at the first graph break; the "eager" backend traces with dynamo only, in seconds.
    model = head(make_config()).eval()
    input_ids, attention_mask = left_padded_prompt()
    step_ids = torch.randint(3, 99, (2, 1))
    step_mask = torch.cat([attention_mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
    inputs = {"attention_mask": attention_mask}
    step = {"attention_mask": step_mask, "position_ids": step_mask.sum(-1, keepdim=True) - 1}
    if model.config.is_encoder_decoder:  # the prefill is the decoder's start, the step its next token
        encoder_outputs = model.get_encoder()(input_ids, attention_mask=attention_mask)
        inputs = {"attention_mask": attention_mask, "encoder_outputs": encoder_outputs,
                  "decoder_input_ids": torch.ones(2, 1, dtype=torch.long)}
        step = {"attention_mask": attention_mask, "encoder_outputs": encoder_outputs, "decoder_input_ids": step_ids}
        input_ids = step_ids = None
    torch._dynamo.reset()
    compiled = torch.compile(model.forward, fullgraph=True, backend="eager")
    with torch.no_grad():
        logits = {}
        for name, forward in (("eager", model.forward), ("compiled", compiled)):
            cache = static_cache_for(model, 16, attention_mask.shape[1])
            forward(input_ids, cache=cache, use_cache=True, **inputs)  # prefill, eager in both
            logits[name] = forward(step_ids, cache=cache, use_cache=True, **step).logits
    torch.testing.assert_close(logits["compiled"], logits["eager"])


def test_decoding_step_reads_no_value_on_the_host():
    # On the "meta" device a tensor has no values: any read on the host (`int(t.max())`, `.item()`, `if t:`) raises.
    # A prefill and a decoding step that run there read nothing, so on an accelerator they do not wait for it.
    model = MiniTransformerForCausalLM(make_config()).eval().to("meta")
    cache = StaticCache(config=model.config, max_cache_len=16)
    with torch.no_grad():
        model(torch.zeros(2, 5, dtype=torch.long, device="meta"), cache=cache, use_cache=True)
        step = model(torch.zeros(2, 1, dtype=torch.long, device="meta"), cache=cache, use_cache=True,
                     position_ids=torch.zeros(2, 1, dtype=torch.long, device="meta"))
    assert step.logits.shape == (2, 1, 99)


def test_value_checks_read_values_only_on_the_cpu():
    # Off the host the check is an asynchronous device assert (raised by the device at its next synchronisation),
    # so meta values, which cannot be read, pass; on the CPU the error is the clear ValueError.
    check_in_range(torch.full((3,), 7, device="meta"), 5, lambda bad: f"value {bad}")
    with pytest.raises(ValueError, match="value 5"):
        check_in_range(torch.tensor([0, 5]), 5, lambda bad: f"value {bad}")
    with pytest.raises(ValueError, match="value -1"):
        check_in_range(torch.tensor([-1, 2]), 5, lambda bad: f"value {bad}")


@pytest.mark.gpu
def test_decoding_step_does_not_synchronise_on_cuda():
    model = MiniTransformerForCausalLM(make_config()).eval().cuda()
    cache = StaticCache(config=model.config, max_cache_len=16)
    input_ids = torch.randint(3, 99, (2, 5), device="cuda")
    with torch.no_grad():
        model(input_ids, cache=cache, use_cache=True)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            model(input_ids[:, :1], cache=cache, use_cache=True,
                  position_ids=torch.full((2, 1), 5, device="cuda"))
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.slow
@pytest.mark.parametrize("head", HEADS)
def test_static_cache_generate_compiles_on_the_cpu(head):
    # The fast path a user asks for transformers' usual way: the decoding step compiled (inductor), same tokens.
    model = head(make_config()).eval()
    input_ids, attention_mask = left_padded_prompt()
    for num_beams in (1, 3):
        kwargs = dict(attention_mask=attention_mask, num_beams=num_beams, **GREEDY)
        dynamic = model.generate(input_ids, **kwargs)
        static = model.generate(input_ids, cache_implementation="static", **kwargs)
        assert torch.equal(static, dynamic)
    assert hasattr(model, "_compiled_call"), "generate did not compile the decoding step"
    assert not hasattr(head(make_config()), "_compiled_call")


@pytest.mark.slow
def test_each_model_keeps_its_own_compiled_steps():
    """transformers compiles `self.__call__`, whose code all models share, and torch.compile keeps one list of
    compiled entries per code object: a step of one model would first try the guards of every other model's
    entries (docs/benchmarks.md: an int8 model beside its float32 original decoded 22-34% faster with its own)."""
    first, second = (MiniTransformerForCausalLM(make_config()).eval() for _ in range(2))
    input_ids, attention_mask = left_padded_prompt()
    for model in (first, second, first):
        model.generate(input_ids, attention_mask=attention_mask, cache_implementation="static", **GREEDY)
    codes = [model._compiled_call._torchdynamo_orig_callable.__code__ for model in (first, second)]
    assert codes[0] is not codes[1]
    assert [len(_debug_get_cache_entry_list(code)) for code in codes] == [1, 1]


@pytest.mark.slow
def test_a_deep_copy_of_a_compiled_model_decodes_with_its_own_weights():
    # transformers' own get_compiled_call keeps a function bound to the original, which the copy inherits: the
    # copy's static-cache steps ran on the original's weights (every token after the first).
    model = MiniTransformerForCausalLM(make_config()).eval()
    input_ids, attention_mask = left_padded_prompt()
    kwargs = dict(attention_mask=attention_mask, **GREEDY)
    model.generate(input_ids, cache_implementation="static", **kwargs)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in twin.parameters():
            parameter.mul_(-1.0)
    expected = twin.generate(input_ids, **kwargs)
    assert not torch.equal(expected, model.generate(input_ids, **kwargs))  # the copy's own tokens differ
    assert torch.equal(twin.generate(input_ids, cache_implementation="static", **kwargs), expected)


class Scale(torch.nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def test_a_step_like_the_one_before_skips_the_guards_that_step_checked():
    # What makes the compiled decoding steps cheaper (docs/benchmarks.md): dynamo's guards on modules and settings
    # are checked in full once per generate and per change of inputs, not at every step. The module attribute
    # below stands for them: changed between two like steps of one generate, it is not seen (nothing inside one
    # generate changes them); every other change is, and so is any change before the next generate.
    module = Scale(2.0)
    compiled = torch.compile(module.__call__, backend="eager", fullgraph=True)
    step = checking_guards_once(compiled)
    x = torch.ones(2)
    assert step(x).tolist() == [2.0, 2.0]
    module.factor = 3.0
    assert step(x).tolist() == [2.0, 2.0]  # a step like the one before: its guards were checked there
    assert step(torch.ones(3)).tolist() == [3.0, 3.0, 3.0]  # other shapes: checked in full, recompiled
    assert step(x).tolist() == [3.0, 3.0]  # back to the first shape: a full check finds the change
    module.factor = 4.0
    assert checking_guards_once(compiled)(x).tolist() == [4.0, 4.0]  # the next generate checks in full


@pytest.mark.slow
def test_compiled_steps_of_changing_lengths_in_one_generate_give_the_eager_tokens():
    # Chunked prefill feeds the compiled call chunks of several lengths within one generate: each chunk whose
    # inputs differ from the one before is checked in full (and compiled), so the tokens stay the eager ones.
    model = MiniTransformerForCausalLM(make_config()).eval()
    input_ids = torch.randint(3, 99, (2, 7))
    expected = model.generate(input_ids, **GREEDY)
    chunked = model.generate(input_ids, cache_implementation="static", prefill_chunk_size=3, **GREEDY)
    assert torch.equal(chunked, expected)
