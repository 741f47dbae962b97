import inspect
import re

import pytest
import torch
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from hf_minitransformer import (
    MiniTransformerForCausalLM,
    MiniTransformerForMaskedLM,
    MiniTransformerForSeq2SeqLM,
    MiniTransformerForSequenceClassification,
    MiniTransformerForTokenClassification,
    MiniTransformerModel,
    MiniTransformerSeq2SeqModel,
)
from hf_minitransformer import loss_minitransformer as loss_module
from hf_minitransformer.modeling_minitransformer import MiniTransformerRotaryEmbedding

from .conftest import make_config, twin_reading_segment_1_as_0


def batch(vocab_size=99, size=(2, 7)):
    return torch.randint(3, vocab_size, size)


def test_base_model_shapes_and_final_norm():
    for position in ("post", "pre"):
        model = MiniTransformerModel(make_config(layer_norm_position=position)).eval()
        assert (model.final_layer_norm is not None) == (position == "pre")
        assert model(batch()).last_hidden_state.shape == (2, 7, 32)


HEADS = [MiniTransformerForMaskedLM, MiniTransformerForCausalLM, MiniTransformerForSequenceClassification,
         MiniTransformerForTokenClassification, MiniTransformerForSeq2SeqLM]


@pytest.mark.parametrize("set_up", [False, True], ids=["plain config", "config of a model of this head"])
@pytest.mark.parametrize("head", HEADS)
def test_what_is_set_on_a_heads_config_stays_there(head, set_up):
    # Each head works on its own copy (README): a caller builds several models from one config object, or goes on
    # using it, and what one model sets must not reach the others. A config already made for the head (the one a
    # checkpoint of it would load) is copied too.
    config = head(make_config()).config if set_up else make_config()
    before, implementation = config.to_dict(), config._attn_implementation
    model = head(config)
    model.config.num_labels = 5
    model.set_attn_implementation("eager")
    assert model.config is not config and model.config._attn_implementation == "eager"
    assert config.to_dict() == before and config._attn_implementation == implementation
    # The body shares its head's copy, so what is set on the head reaches the layers that read it.
    assert model.base_model.config is model.config


def forward_inputs(model_class) -> set[str]:
    return set(inspect.signature(model_class.forward).parameters) - {"self", "kwargs"}


@pytest.mark.parametrize("head", HEADS)
def test_every_head_names_each_input_its_base_model_takes(head):
    # transformers' rule for a family (GPT-2's and BERT's heads all name token_type_ids): what the base model takes,
    # its heads name, so generate(), pipelines and exporters that read a signature see it.
    base = MiniTransformerSeq2SeqModel if head is MiniTransformerForSeq2SeqLM else MiniTransformerModel
    expected = forward_inputs(base) - {"encoder_hidden_states", "encoder_attention_mask"}  # the decoder stack's own
    if head not in (MiniTransformerForCausalLM, MiniTransformerForSeq2SeqLM):
        expected -= {"cache", "use_cache"}  # a bidirectional encoder keeps no cache
    assert expected <= forward_inputs(head), expected - forward_inputs(head)


@pytest.mark.parametrize("head", HEADS)
def test_token_types_reach_the_body_of_every_head(head):
    model = head(make_config(type_vocab_size=2, num_labels=3)).eval()
    input_ids = batch()
    inputs = dict(input_ids=input_ids)
    if model.config.is_encoder_decoder:
        inputs["decoder_input_ids"] = input_ids[:, :4]
    with torch.no_grad():
        second_segment = model(**inputs, token_type_ids=torch.ones_like(input_ids)).logits
        expected = twin_reading_segment_1_as_0(model)(**inputs).logits
        first_segment = model(**inputs).logits
    torch.testing.assert_close(second_segment, expected, rtol=0, atol=0)
    assert not torch.allclose(second_segment, first_segment)


def test_token_types_a_model_has_no_table_for_are_refused():
    one_segment = MiniTransformerForCausalLM(make_config()).eval()  # type_vocab_size=0: segment 0 only
    input_ids = batch()
    with torch.no_grad():
        plain = one_segment(input_ids).logits
        torch.testing.assert_close(one_segment(input_ids, token_type_ids=torch.zeros_like(input_ids)).logits, plain)
    with pytest.raises(ValueError, match="segment id 1, but this model has no token-type embeddings"):
        one_segment(input_ids, token_type_ids=torch.ones_like(input_ids))
    two_segments = MiniTransformerModel(make_config(type_vocab_size=2))
    with pytest.raises(ValueError, match=r"segment id 2, outside the token types \[0, type_vocab_size=2\)"):
        two_segments(input_ids, token_type_ids=torch.full_like(input_ids, 2))
    with pytest.raises(ValueError, match=r"token_type_ids has shape \(2, 6\); expected .* \(2, 7\)"):
        two_segments(input_ids, token_type_ids=torch.zeros(2, 6, dtype=torch.long))


@pytest.mark.parametrize("head", [MiniTransformerForCausalLM, MiniTransformerForSeq2SeqLM])
def test_a_head_leaves_the_callers_config_as_it_was(head):
    config = make_config()
    before = config.to_dict()
    model = head(config)
    assert config.to_dict() == before and not config.is_decoder and not config.is_encoder_decoder
    assert model.config is not config
    # The same object then builds an encoder: position 0 must still see the tokens after it.
    encoder = MiniTransformerForMaskedLM(config).eval()
    input_ids = batch(size=(1, 6))
    changed = input_ids.clone()
    changed[0, 5] = (input_ids[0, 5] + 1 - 3) % 96 + 3
    with torch.no_grad():
        first, second = encoder(input_ids).logits[0, 0], encoder(changed).logits[0, 0]
    assert not torch.allclose(first, second)


def test_masked_lm_loss_ignores_unlabelled_positions():
    model = MiniTransformerForMaskedLM(make_config()).eval()
    input_ids = batch()
    labels = torch.full_like(input_ids, -100)
    labels[:, 2] = input_ids[:, 2]
    out = model(input_ids, labels=labels)
    assert out.logits.shape == (2, 7, 99)
    expected = nn.functional.cross_entropy(out.logits[:, 2], input_ids[:, 2])
    torch.testing.assert_close(out.loss, expected)


def test_causal_lm_loss_shifts_labels():
    model = MiniTransformerForCausalLM(make_config()).eval()
    assert model.config.is_decoder
    input_ids = batch()
    out = model(input_ids, labels=input_ids)
    expected = nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 99), input_ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize(
    "problem_type, labels",
    [
        ("single_label_classification", torch.tensor([0, 2])),
        ("multi_label_classification", torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])),
    ],
)
def test_sequence_classification_problem_types(problem_type, labels):
    model = MiniTransformerForSequenceClassification(make_config(num_labels=3)).eval()
    out = model(batch(), labels=labels)
    assert out.logits.shape == (2, 3)
    assert model.config.problem_type == problem_type
    if problem_type == "single_label_classification":
        expected = nn.functional.cross_entropy(out.logits, labels)
    else:
        expected = nn.functional.binary_cross_entropy_with_logits(out.logits, labels)
    torch.testing.assert_close(out.loss, expected)


def test_sequence_regression():
    model = MiniTransformerForSequenceClassification(make_config(num_labels=1)).eval()
    labels = torch.tensor([0.5, -1.0])
    out = model(batch(), labels=labels)
    assert model.config.problem_type == "regression"
    torch.testing.assert_close(out.loss, nn.functional.mse_loss(out.logits.squeeze(-1), labels))


@pytest.mark.parametrize("pooling", ["mean", "first", "last"])
def test_sequence_classification_pooling_ignores_padding(pooling):
    model = MiniTransformerForSequenceClassification(make_config(num_labels=2, classifier_pooling=pooling)).eval()
    input_ids = batch(size=(1, 5))
    padded = torch.cat([input_ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 5 + [0] * 3])
    with torch.no_grad():
        alone = model(input_ids).logits
        with_padding = model(padded, attention_mask=mask).logits
    torch.testing.assert_close(with_padding, alone, rtol=1e-5, atol=1e-5)


def test_token_classification():
    model = MiniTransformerForTokenClassification(make_config(num_labels=5)).eval()
    input_ids = batch()
    labels = torch.randint(0, 5, (2, 7))
    labels[:, -2:] = -100
    out = model(input_ids, labels=labels)
    assert out.logits.shape == (2, 7, 5)
    expected = nn.functional.cross_entropy(out.logits[:, :-2].reshape(-1, 5), labels[:, :-2].reshape(-1))
    torch.testing.assert_close(out.loss, expected)


def test_return_dict_false_gives_tuple_with_loss_first():
    model = MiniTransformerForCausalLM(make_config()).eval()
    input_ids = batch()
    as_dict = model(input_ids, labels=input_ids)
    as_tuple = model(input_ids, labels=input_ids, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)


def test_output_hidden_states_and_attentions_are_captured():
    model = MiniTransformerModel(make_config()).eval()
    model.set_attn_implementation("eager")
    out = model(batch(), output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 3  # embeddings + one per layer
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 7, 7)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, 4, 7))
    assert model(batch()).hidden_states is None


def test_gradient_checkpointing_gives_the_same_gradients():
    model = MiniTransformerForCausalLM(make_config())
    model.train()
    input_ids = batch()
    model(input_ids, labels=input_ids).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing
    calls = []
    model.model.layers[0].feed_forward.register_forward_hook(lambda *args: calls.append(1))
    model(input_ids, labels=input_ids).loss.backward()
    assert len(calls) == 2  # the layer ran again during backward: activations were recomputed, not stored
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, reference[name], msg=name)


def test_output_projection_is_tied_and_survives_resize():
    model = MiniTransformerForMaskedLM(make_config())
    assert model.lm_head.weight is model.model.embeddings.token_embeddings.weight
    with torch.no_grad():
        model.lm_head.bias.normal_()
    old_bias = model.lm_head.bias.clone()
    model.resize_token_embeddings(120)
    assert model.config.vocab_size == 120
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert model.lm_head.weight.shape == (120, 32) and model.lm_head.bias.shape == (120,)
    torch.testing.assert_close(model.lm_head.bias[:99], old_bias)
    assert model(torch.tensor([[119, 5]])).logits.shape == (1, 2, 120)


def test_untied_embeddings_when_asked():
    model = MiniTransformerForCausalLM(make_config(tie_word_embeddings=False))
    assert model.lm_head.weight is not model.model.embeddings.token_embeddings.weight


def test_initialisation_statistics():
    config = make_config(hidden_size=128, intermediate_size=512, initializer_range=0.02)
    model = MiniTransformerForCausalLM(config)
    q = model.model.layers[0].self_attn.q_proj.weight
    assert abs(q.std().item() - 0.02) < 0.002 and abs(q.mean().item()) < 0.002
    norm = model.model.layers[0].attn_layer_norm
    assert torch.equal(norm.weight, torch.ones(128)) and torch.equal(norm.bias, torch.zeros(128))
    assert torch.equal(model.model.layers[0].feed_forward.fc1.bias, torch.zeros(512))
    assert torch.equal(model.lm_head.bias, torch.zeros(99))
    assert torch.equal(model.get_input_embeddings().weight[config.pad_token_id], torch.zeros(128))


def test_inputs_embeds_equal_input_ids():
    model = MiniTransformerForCausalLM(make_config()).eval()
    input_ids = batch()
    embeds = model.get_input_embeddings()(input_ids)
    torch.testing.assert_close(model(inputs_embeds=embeds).logits, model(input_ids).logits)


@pytest.mark.parametrize("head", [MiniTransformerForCausalLM, MiniTransformerForSeq2SeqLM])
def test_logits_to_keep(head):
    model = head(make_config()).eval()
    input_ids = batch()
    inputs = dict(decoder_input_ids=batch(size=(2, 5))) if model.config.is_encoder_decoder else {}
    full = model(input_ids, **inputs).logits
    torch.testing.assert_close(model(input_ids, **inputs, logits_to_keep=1).logits, full[:, -1:])
    kept = model(input_ids, **inputs, logits_to_keep=torch.tensor([0, 3])).logits
    torch.testing.assert_close(kept, full[:, [0, 3]])
    # generate() asks the heads that take `logits_to_keep` for the last position only.
    assert model._supports_logits_to_keep()


def test_explicit_position_ids_shift_the_encoding():
    model = MiniTransformerModel(make_config()).eval()
    input_ids = batch(size=(1, 5))
    default = model(input_ids).last_hidden_state
    torch.testing.assert_close(model(input_ids, position_ids=torch.arange(5)[None]).last_hidden_state, default)
    assert not torch.allclose(model(input_ids, position_ids=torch.arange(3, 8)[None]).last_hidden_state, default)


def test_bfloat16_forward():
    model = MiniTransformerForCausalLM(make_config()).to(torch.bfloat16).eval()
    out = model(batch())
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits.float()).all()


# Bad input: a clear ValueError naming the value, not an index error deep inside.


def test_token_ids_outside_the_vocabulary():
    model = MiniTransformerModel(make_config())
    with pytest.raises(ValueError, match=r"token id 99, outside the vocabulary \[0, 99\)"):
        model(torch.tensor([[5, 99]]))
    with pytest.raises(ValueError, match=r"token id -1"):
        model(torch.tensor([[-1, 5]]))


@pytest.mark.parametrize("position_embedding_type", ["sinusoidal", "learned"])
def test_sequence_longer_than_the_position_table(position_embedding_type):
    model = MiniTransformerModel(make_config(position_embedding_type=position_embedding_type))
    with pytest.raises(ValueError, match=r"Position 64 is outside \[0, max_position_embeddings=64\)"):
        model(torch.randint(3, 99, (1, 65)))
    with pytest.raises(ValueError, match="Position 64 is outside"):
        model(torch.randint(3, 99, (1, 4)), position_ids=torch.arange(61, 65)[None])
    with pytest.raises(ValueError, match="Position -1 is outside"):
        model(torch.randint(3, 99, (1, 2)), position_ids=torch.tensor([[-1, 0]]))


def test_one_dimensional_input_ids_are_refused_by_their_shape():
    model = MiniTransformerModel(make_config())
    with pytest.raises(ValueError, match=r"input_ids must be 2-D \(batch, seq\), got shape \(7,\)"):
        model(torch.randint(3, 99, (7,)))
    with pytest.raises(ValueError, match=r"inputs_embeds must be 3-D \(batch, seq, hidden\), got shape \(7, 32\)"):
        model(inputs_embeds=torch.randn(7, 32))


def test_rotary_positions_extend_past_max_position_embeddings():
    model = MiniTransformerModel(make_config(position_embedding_type="rotary"))
    assert model(torch.randint(3, 99, (1, 80))).last_hidden_state.shape == (1, 80, 32)


@pytest.mark.parametrize(
    "mask", [torch.ones(2, 6), torch.ones(3, 7), torch.ones(7), torch.ones(2, 1, 7), torch.ones(2, 1, 5, 7)]
)
def test_attention_mask_of_the_wrong_shape(mask):
    model = MiniTransformerModel(make_config())
    with pytest.raises(ValueError, match=r"attention_mask has shape"):
        model(batch(), attention_mask=mask)


def test_exactly_one_of_ids_and_embeds():
    model = MiniTransformerModel(make_config())
    with pytest.raises(ValueError, match="exactly one of `input_ids` and `inputs_embeds`"):
        model()


# `config.logits_with_loss`: fewer logits, the same loss and gradients.


def _loss_grads_logits(head, mode, input_ids, labels, **overrides):
    torch.manual_seed(0)
    model = head(make_config(logits_with_loss=mode, **overrides))
    out = model(input_ids, labels=labels)
    out.loss.backward()
    return out.loss.detach(), {name: param.grad for name, param in model.named_parameters()}, out.logits


@pytest.mark.parametrize("head", [MiniTransformerForCausalLM, MiniTransformerForMaskedLM, MiniTransformerForSeq2SeqLM])
@pytest.mark.parametrize("mode", ["labelled", "none"])
@pytest.mark.parametrize("tied", [True, False])
def test_fewer_logits_give_the_same_loss_and_gradients(head, mode, tied, monkeypatch):
    # Chunks of 3 rows (3 * vocab 99 logits), so the fused loss runs its loop several times.
    monkeypatch.setattr(loss_module, "LOSS_CHUNK_ELEMENTS", 3 * 99)
    input_ids = batch(size=(3, 9))
    labels = input_ids.clone()
    labels[0, :4] = -100  # a padded prefix
    if head is MiniTransformerForMaskedLM:
        labels[torch.rand(3, 9) < 0.7] = -100
    loss, grads, logits = _loss_grads_logits(head, "all", input_ids, labels, tie_word_embeddings=tied)
    fewer_loss, fewer_grads, fewer_logits = _loss_grads_logits(head, mode, input_ids, labels, tie_word_embeddings=tied)
    torch.testing.assert_close(fewer_loss, loss)
    for name, grad in grads.items():
        torch.testing.assert_close(fewer_grads[name], grad, msg=name)
    if mode == "none":
        assert fewer_logits is None
    else:  # the logits of the positions the loss scores, in order (seq2seq: the decoder's, aligned with labels)
        scored_labels = labels[:, 1:] if head is MiniTransformerForCausalLM else labels
        scored_logits = logits[:, :-1] if head is MiniTransformerForCausalLM else logits
        torch.testing.assert_close(fewer_logits, scored_logits[scored_labels != -100])


@pytest.mark.parametrize("mode", ["labelled", "none"])
def test_fewer_logits_honour_num_items_in_batch(mode):
    input_ids = batch()
    model = MiniTransformerForCausalLM(make_config(logits_with_loss=mode)).eval()
    reference = MiniTransformerForCausalLM(make_config()).eval()
    reference.load_state_dict(model.state_dict())
    for num_items in (torch.tensor(20), 20):
        expected = reference(input_ids, labels=input_ids, num_items_in_batch=num_items).loss
        torch.testing.assert_close(model(input_ids, labels=input_ids, num_items_in_batch=num_items).loss, expected)


def test_fused_loss_without_gradients_and_without_labels():
    model = MiniTransformerForMaskedLM(make_config(logits_with_loss="none")).eval()
    reference = MiniTransformerForMaskedLM(make_config()).eval()
    reference.load_state_dict(model.state_dict())
    input_ids = batch()
    labels = torch.where(torch.rand(2, 7) < 0.5, input_ids, -100)
    labels[0, 0] = input_ids[0, 0]
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids, labels=labels).loss, reference(input_ids, labels=labels).loss)
        # Without labels every head returns every position's logits, whatever `logits_with_loss` says.
        torch.testing.assert_close(model(input_ids).logits, reference(input_ids).logits)


def test_fused_loss_under_bfloat16_autocast():
    model = MiniTransformerForCausalLM(make_config(logits_with_loss="none"))
    reference = MiniTransformerForCausalLM(make_config())
    reference.load_state_dict(model.state_dict())
    input_ids = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids, labels=input_ids).loss
        expected = reference(input_ids, labels=input_ids).loss
    loss.backward()
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=2e-2, atol=2e-2)
    for (name, param), ref in zip(model.named_parameters(), reference.parameters()):
        assert param.grad.dtype == param.dtype
        torch.testing.assert_close(param.grad, ref.grad, rtol=5e-2, atol=5e-3, msg=name)


def test_logits_with_loss_must_be_known():
    with pytest.raises(ValueError, match=r"`logits_with_loss` must be one of 'all', 'labelled', 'none', got 'some'"):
        make_config(logits_with_loss="some")


HEADS = [MiniTransformerModel, MiniTransformerForMaskedLM, MiniTransformerForCausalLM,
         MiniTransformerForSequenceClassification, MiniTransformerForTokenClassification, MiniTransformerSeq2SeqModel,
         MiniTransformerForSeq2SeqLM]


@pytest.mark.parametrize("head", HEADS, ids=lambda head: head.__name__)
def test_every_tensor_parallel_rule_names_modules_of_the_head(head):
    # transformers shards by these patterns; a rule matching nothing would silently leave layers whole.
    model = head(make_config(num_labels=3, decoder_layers=3))
    plan = model.tp_plan
    modules = {re.sub(r"\.\d+\.", ".*.", name) for name, _ in model.named_modules()}
    assert plan and set(plan) <= modules, set(plan) - modules
    # ... and every linear layer of attention and feed-forward has its rule (cross-attention included).
    projections = {name for name in modules
                   if name.rsplit(".", 1)[-1] in {"q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"}}
    assert projections == set(plan)


ROPE_SCALINGS = {
    "linear": {"factor": 2.0},
    "dynamic": {"factor": 2.0},
    "yarn": {"factor": 2.0, "original_max_position_embeddings": 16},
    "llama3": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16},
    "longrope": {"short_factor": [1.0, 1.0, 1.0, 1.0], "long_factor": [2.0, 3.0, 4.0, 5.0],
                 "original_max_position_embeddings": 16},
}


@pytest.mark.parametrize("rope_type", ROPE_SCALINGS)
def test_rope_scaling_behaves_as_in_llama(rope_type):
    rope_parameters = {"rope_type": rope_type, "rope_theta": 10000.0, **ROPE_SCALINGS[rope_type]}
    sizes = dict(hidden_size=32, num_attention_heads=4, max_position_embeddings=32)
    ours = MiniTransformerRotaryEmbedding(
        make_config(**sizes, position_embedding_type="rotary", rope_parameters=dict(rope_parameters))
    )
    llama = LlamaRotaryEmbedding(LlamaConfig(**sizes, rope_parameters=dict(rope_parameters)))
    default = MiniTransformerRotaryEmbedding(make_config(**sizes, position_embedding_type="rotary"))
    x = torch.zeros(1)
    for length in (8, 64):  # within the original length, then past it ("dynamic" recomputes only there)
        positions = torch.arange(length)[None]
        (cos, sin), (llama_cos, llama_sin) = ours(x, positions), llama(x, positions)
        torch.testing.assert_close(cos, llama_cos, rtol=0, atol=1e-6)
        torch.testing.assert_close(sin, llama_sin, rtol=0, atol=1e-6)
        scaled = not torch.allclose(cos, default(x, positions)[0])
        assert scaled == (rope_type != "dynamic" or length > 32), (rope_type, length)


def test_rope_scaling_reaches_the_model_output():
    input_ids = batch(size=(1, 12))
    outputs = []
    for rope_parameters in (None, {"rope_type": "linear", "factor": 4.0}):
        torch.manual_seed(0)
        model = MiniTransformerModel(make_config(position_embedding_type="rotary", rope_parameters=rope_parameters))
        with torch.no_grad():
            outputs.append(model.eval()(input_ids).last_hidden_state)
    assert not torch.allclose(*outputs)


@pytest.mark.parametrize("mode", ["all", "labelled", "none"])
@pytest.mark.parametrize("head", [MiniTransformerForMaskedLM, MiniTransformerForCausalLM, MiniTransformerForSeq2SeqLM])
def test_a_batch_with_no_scored_label_has_a_nan_loss_as_documented(head, mode):
    # 0 / 0, as transformers' own LM losses give it (README, forward docstrings); never a silent 0.
    model = head(make_config(logits_with_loss=mode))
    input_ids = batch()
    loss = model(input_ids, labels=torch.full_like(input_ids, -100)).loss
    assert loss.isnan()
