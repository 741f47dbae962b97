"""MiniTransformerForSeq2SeqLM: the encoder-decoder of the paper's Figure 1, its loss, cache, generation and pipelines.

Save/load and remote code for this head run with the other heads' in test_save_load.py; its float64 reference is in
test_reference.py.
"""

import pytest
import torch
import transformers
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModel,
    AutoModelForSeq2SeqLM,
    DataCollatorForSeq2Seq,
    EncoderDecoderCache,
    PreTrainedTokenizerFast,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
)
from transformers.modeling_outputs import Seq2SeqModelOutput

from hf_minitransformer import MiniTransformerForCausalLM, MiniTransformerForSeq2SeqLM, MiniTransformerSeq2SeqModel
from hf_minitransformer.modeling_minitransformer import shift_tokens_right
from hf_minitransformer.pipelines_minitransformer import (
    MiniTransformerText2TextGenerationPipeline,
    MiniTransformerTranslationPipeline,
)

from .conftest import make_config, run_python


POSITIONS = ["sinusoidal", "learned", "rotary"]


def seq2seq(**overrides) -> MiniTransformerForSeq2SeqLM:
    return MiniTransformerForSeq2SeqLM(make_config(**overrides)).eval()


def source_batch() -> dict[str, torch.Tensor]:
    input_ids = torch.randint(3, 99, (2, 7))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0  # right-padded second source
    return dict(input_ids=input_ids, attention_mask=attention_mask)


def test_two_stacks_of_their_own_depth_sharing_one_embedding_matrix():
    model = seq2seq(num_hidden_layers=2, decoder_layers=3)
    assert model.config.is_encoder_decoder and not model.config.is_decoder
    assert len(model.get_encoder().layers) == 2 and len(model.get_decoder().layers) == 3
    assert all(layer.cross_attn is None for layer in model.get_encoder().layers)
    assert all(layer.cross_attn is not None for layer in model.get_decoder().layers)
    shared = model.get_input_embeddings().weight
    assert model.get_decoder().get_input_embeddings().weight is shared and model.lm_head.weight is shared
    untied = seq2seq(tie_word_embeddings=False)
    weights = [untied.get_encoder().get_input_embeddings().weight, untied.get_decoder().get_input_embeddings().weight,
               untied.lm_head.weight]
    assert len({w.data_ptr() for w in weights}) == 3


def test_the_head_holds_the_bare_encoder_decoder_under_its_base_model_prefix():
    model = seq2seq()
    assert type(model.model) is MiniTransformerSeq2SeqModel and model.base_model is model.model
    assert model.get_encoder() is model.model.encoder and model.get_decoder() is model.model.decoder
    # AutoModel of an encoder-decoder config is the bare encoder-decoder, as for BART and Marian.
    assert type(AutoModel.from_config(model.config)) is MiniTransformerSeq2SeqModel
    source, target = source_batch(), torch.randint(3, 99, (2, 5))
    with torch.no_grad():
        bare = model.model(**source, decoder_input_ids=target)
        full = model(**source, decoder_input_ids=target)
    assert isinstance(bare, Seq2SeqModelOutput) and bare.last_hidden_state.shape == (2, 5, 32)
    assert torch.equal(model.lm_head(bare.last_hidden_state), full.logits)
    assert torch.equal(bare.encoder_last_hidden_state, full.encoder_last_hidden_state)


def test_head_and_bare_model_load_each_others_checkpoints(tmp_path):
    head = seq2seq()
    source, target = source_batch(), torch.randint(3, 99, (2, 5))
    head.save_pretrained(tmp_path / "head")
    bare, info = AutoModel.from_pretrained(tmp_path / "head", output_loading_info=True)
    assert type(bare) is MiniTransformerSeq2SeqModel
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        expected = head.model(**source, decoder_input_ids=target).last_hidden_state
        assert torch.equal(bare(**source, decoder_input_ids=target).last_hidden_state, expected)

    bare.save_pretrained(tmp_path / "bare")
    reloaded, info = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "bare", output_loading_info=True)
    # The head's one weight of its own that the bare checkpoint lacks is reported, as transformers reports any.
    assert info["missing_keys"] == {"lm_head.bias"} and not info["unexpected_keys"] and not info["mismatched_keys"]
    for name, value in bare.state_dict().items():
        assert torch.equal(reloaded.model.state_dict()[name], value), name
    assert torch.equal(reloaded.lm_head.weight, bare.get_input_embeddings().weight)  # tied
    assert not reloaded.lm_head.bias.any()  # the bare model has no output bias: it starts at zero


def test_feature_extraction_pipeline_on_a_seq2seq_checkpoint(tmp_path):
    tokenizer = char_tokenizer()
    head = seq2seq()
    head.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    extractor = transformers.pipeline("feature-extraction", model=str(tmp_path))
    assert type(extractor.model) is MiniTransformerSeq2SeqModel
    features = torch.tensor(extractor("moon"))  # (1, target = source length, hidden)
    input_ids = tokenizer("moon", return_tensors="pt")["input_ids"]
    with torch.no_grad():  # without decoder inputs the decoder reads the source shifted right, as BartModel does
        expected = head.model(input_ids=input_ids).last_hidden_state
    assert features.shape == (1, 4, 32)
    torch.testing.assert_close(features, expected)


def test_single_stack_heads_ignore_an_encoder_decoder_config():
    config = seq2seq().config  # is_encoder_decoder=True, as saved in a seq2seq checkpoint
    causal = MiniTransformerForCausalLM(config)
    assert not causal.config.is_encoder_decoder
    assert all(layer.cross_attn is None for layer in causal.model.layers)
    assert causal(torch.randint(3, 99, (1, 5))).logits.shape == (1, 5, 99)


@pytest.mark.parametrize("tied", [True, False])
def test_resize_reaches_both_stacks_and_the_output(tied):
    model = seq2seq(tie_word_embeddings=tied)
    model.resize_token_embeddings(120)
    assert model.get_encoder().get_input_embeddings().weight.shape == (120, 32)
    assert model.get_decoder().get_input_embeddings().weight.shape == (120, 32)
    assert model.lm_head.weight.shape == (120, 32) and model.lm_head.bias.shape == (120,)
    assert (model.lm_head.weight is model.get_input_embeddings().weight) == tied
    # The new ids are accepted by both stacks' input checks.
    out = model(input_ids=torch.tensor([[119, 5]]), decoder_input_ids=torch.tensor([[1, 118]]))
    assert out.logits.shape == (1, 2, 120)


def test_decoder_inputs_are_the_labels_shifted_behind_the_start_token():
    labels = torch.tensor([[5, 6, 7, 2], [8, 9, -100, -100]])
    assert torch.equal(shift_tokens_right(labels, pad_token_id=0, decoder_start_token_id=1),
                       torch.tensor([[1, 5, 6, 7], [1, 8, 9, 0]]))
    model = seq2seq(decoder_start_token_id=4)
    assert torch.equal(model.prepare_decoder_input_ids_from_labels(labels)[:, 0], torch.tensor([4, 4]))
    source = source_batch()
    with torch.no_grad():
        out = model(**source, labels=labels)
        explicit = model(**source, decoder_input_ids=model.prepare_decoder_input_ids_from_labels(labels))
    torch.testing.assert_close(out.logits, explicit.logits)
    # Position t is scored on labels[t] (no further shift); -100 is ignored.
    scored = labels != -100
    expected = torch.nn.functional.cross_entropy(out.logits[scored], labels[scored])
    torch.testing.assert_close(out.loss, expected)
    assert out.cache is None  # teacher forcing caches nothing


def test_decoder_is_causal_encoder_is_bidirectional_and_cross_attention_reads_the_source():
    model = seq2seq()
    source, target = torch.randint(3, 99, (1, 6)), torch.randint(3, 99, (1, 5))
    with torch.no_grad():
        base = model(input_ids=source, decoder_input_ids=target)
        changed_target = target.clone()
        changed_target[0, 3] = (target[0, 3] + 1 - 3) % 96 + 3
        later = model(input_ids=source, decoder_input_ids=changed_target)
        changed_source = source.clone()
        changed_source[0, -1] = (source[0, -1] + 1 - 3) % 96 + 3
        other_source = model(input_ids=changed_source, decoder_input_ids=target)
    # A later target token never changes the logits before it; the last source token changes every output.
    torch.testing.assert_close(later.logits[:, :3], base.logits[:, :3], rtol=0, atol=0)
    assert not torch.allclose(later.logits[:, 3:], base.logits[:, 3:])
    assert not torch.allclose(other_source.encoder_last_hidden_state[:, 0], base.encoder_last_hidden_state[:, 0])
    assert not torch.allclose(other_source.logits[:, 0], base.logits[:, 0])


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_source_padding_does_not_change_the_real_outputs(implementation):
    model = seq2seq()
    model.set_attn_implementation(implementation)
    source, target = torch.randint(3, 99, (1, 5)), torch.randint(3, 99, (1, 4))
    padded = torch.cat([source, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        alone = model(input_ids=source, decoder_input_ids=target)
        with_padding = model(input_ids=padded, attention_mask=mask, decoder_input_ids=target)
    torch.testing.assert_close(with_padding.logits, alone.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(with_padding.encoder_last_hidden_state[:, :5], alone.encoder_last_hidden_state,
                               rtol=1e-5, atol=1e-5)


def test_attentions_and_hidden_states_of_each_stack_are_captured():
    model = seq2seq(num_hidden_layers=2, decoder_layers=3)
    model.set_attn_implementation("eager")  # SDPA computes no attention weights
    with torch.no_grad():
        out = model(**source_batch(), decoder_input_ids=torch.randint(3, 99, (2, 4)),
                    output_attentions=True, output_hidden_states=True)
    assert [a.shape for a in out.encoder_attentions] == [(2, 4, 7, 7)] * 2
    assert [a.shape for a in out.decoder_attentions] == [(2, 4, 4, 4)] * 3
    assert [a.shape for a in out.cross_attentions] == [(2, 4, 4, 7)] * 3
    assert len(out.encoder_hidden_states) == 3 and len(out.decoder_hidden_states) == 4
    torch.testing.assert_close(out.encoder_hidden_states[-1], out.encoder_last_hidden_state)
    # Cross-attention gives no weight to source padding; self-attention none to later target tokens.
    assert torch.all(out.cross_attentions[0][1, :, :, 5:] == 0)
    assert torch.all(out.decoder_attentions[0][:, :, 0, 1:] == 0)


def test_gradient_checkpointing_gives_the_same_gradients_to_both_stacks():
    model = seq2seq().train()
    source, labels = source_batch(), torch.randint(3, 99, (2, 5))
    model(**source, labels=labels).loss.backward()
    reference = {name: param.grad.clone() for name, param in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    model(**source, labels=labels).loss.backward()
    # The encoder's weights are reached only through the decoder layers' cross-attention.
    assert reference["model.encoder.layers.0.self_attn.q_proj.weight"].abs().sum() > 0
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, reference[name], msg=name)


@pytest.mark.parametrize("layer_norm_position", ["post", "pre"])
@pytest.mark.parametrize("position_embedding_type", POSITIONS)
def test_incremental_decoding_with_the_cache_equals_the_full_forward(position_embedding_type, layer_norm_position):
    model = seq2seq(position_embedding_type=position_embedding_type, layer_norm_position=layer_norm_position,
                    decoder_layers=3)
    source, target = source_batch(), torch.randint(3, 99, (2, 6))
    with torch.no_grad():
        full = model(**source, decoder_input_ids=target).logits
        encoder_outputs = model.get_encoder()(**source)
        cache, steps = None, []
        for t in range(target.shape[1]):
            out = model(attention_mask=source["attention_mask"], encoder_outputs=encoder_outputs,
                        decoder_input_ids=target[:, t : t + 1], cache=cache, use_cache=True)
            cache = out.cache
            steps.append(out.logits)
    assert isinstance(cache, EncoderDecoderCache)
    assert cache.get_seq_length() == 6
    assert cache.cross_attention_cache.layers[0].keys.shape == (2, 4, 7, 8)  # the source, projected once
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("position_embedding_type", POSITIONS)
def test_generate_gives_the_same_tokens_with_and_without_the_cache(position_embedding_type, num_beams):
    model = seq2seq(position_embedding_type=position_embedding_type, decoder_layers=3)
    kwargs = dict(**source_batch(), max_new_tokens=10, num_beams=num_beams, do_sample=False, eos_token_id=None)
    with_cache = model.generate(**kwargs, use_cache=True)
    without_cache = model.generate(**kwargs, use_cache=False)
    assert with_cache.shape == (2, 11)
    assert torch.all(with_cache[:, 0] == model.config.decoder_start_token_id)
    assert torch.equal(with_cache, without_cache)


def test_greedy_generate_is_the_argmax_of_the_forward_pass():
    model = seq2seq()
    source = source_batch()
    generated = model.generate(**source, max_new_tokens=6, do_sample=False, eos_token_id=None)
    with torch.no_grad():
        logits = model(**source, decoder_input_ids=generated[:, :-1]).logits
    assert torch.equal(logits.argmax(-1), generated[:, 1:])


def test_beam_search_scores_at_least_greedy():
    model = seq2seq()
    source = source_batch()
    kwargs = dict(max_new_tokens=6, do_sample=False, eos_token_id=None, output_scores=True,
                  return_dict_in_generate=True)
    greedy = model.generate(**source, **kwargs)
    beams = model.generate(**source, num_beams=4, length_penalty=0.0, **kwargs)

    def log_likelihood(sequences):
        with torch.no_grad():
            logits = model(**source, decoder_input_ids=sequences[:, :-1]).logits
        return logits.log_softmax(-1).gather(-1, sequences[:, 1:, None]).squeeze(-1).sum(-1)

    torch.testing.assert_close(beams.sequences_scores, log_likelihood(beams.sequences), rtol=1e-4, atol=1e-4)
    assert torch.all(log_likelihood(beams.sequences) >= log_likelihood(greedy.sequences) - 1e-5)


def test_bad_decoder_input_raises_value_error():
    model = seq2seq(max_position_embeddings=16)
    source = torch.randint(3, 99, (1, 4))
    with pytest.raises(ValueError, match="token id 150, outside the vocabulary"):
        model(input_ids=source, decoder_input_ids=torch.tensor([[1, 150]]))
    with pytest.raises(ValueError, match="max_position_embeddings=16"):
        model(input_ids=source, decoder_input_ids=torch.randint(3, 99, (1, 20)))
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        model.get_encoder()(source, encoder_hidden_states=torch.zeros(1, 4, 32))


# A character tokenizer: ids 0-2 are <pad> <s> </s>, then "a".."z" and space; the model's vocabulary matches it.
CHARACTERS = "abcdefghijklmnopqrstuvwxyz "


def char_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{c: 3 + i for i, c in enumerate(CHARACTERS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def reversal_pairs() -> list[tuple[str, str]]:
    words = ["cat", "dog", "bird", "fish", "tree", "leaf", "rock", "sand", "moon", "star", "wind", "rain"]
    return [(word, word[::-1]) for word in words]


@pytest.fixture(scope="module")
def reverser(tmp_path_factory):
    """A tiny model trained (DataCollatorForSeq2Seq, AdamW) to reverse words, saved with its tokenizer."""
    torch.manual_seed(0)
    tokenizer = char_tokenizer()
    model = MiniTransformerForSeq2SeqLM(make_config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128))
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    features = [{"input_ids": tokenizer(source)["input_ids"],
                 "labels": tokenizer(target)["input_ids"] + [tokenizer.eos_token_id]}
                for source, target in reversal_pairs()]
    batch = collator(features)
    assert torch.equal(batch["decoder_input_ids"], model.prepare_decoder_input_ids_from_labels(batch["labels"]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(300):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    folder = tmp_path_factory.mktemp("reverser")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer, folder


def test_a_trained_model_generates_the_targets(reverser):
    model, tokenizer, _ = reverser
    sources, targets = zip(*reversal_pairs())
    inputs = tokenizer(list(sources), return_tensors="pt", padding=True)
    for num_beams in (1, 4):
        generated = model.generate(**inputs, num_beams=num_beams, max_new_tokens=8)
        assert tokenizer.batch_decode(generated, skip_special_tokens=True) == list(targets)


def test_pipelines_built_in_process(reverser):
    model, tokenizer, _ = reverser
    text2text = MiniTransformerText2TextGenerationPipeline(model=model, tokenizer=tokenizer)
    translation = MiniTransformerTranslationPipeline(model=model, tokenizer=tokenizer)
    assert text2text("moon") == [{"generated_text": "noom"}]
    translated = translation(["star", "wind"], num_beams=2)
    assert translated == [[{"translation_text": "rats"}], [{"translation_text": "dniw"}]]
    two = text2text("rock", num_beams=3, num_return_sequences=2)
    assert len(two) == 2 and two[0] == {"generated_text": "kcor"}
    with pytest.raises(ValueError, match="takes a string or a list of strings, got int"):
        text2text(5)


@pytest.mark.parametrize("pipeline_class",
                         [MiniTransformerTranslationPipeline, MiniTransformerText2TextGenerationPipeline])
def test_pipelines_refuse_an_empty_text_clearly(reverser, pipeline_class):
    model, tokenizer, _ = reverser
    pipe = pipeline_class(model=model, tokenizer=tokenizer)
    with pytest.raises(ValueError, match=f"{pipeline_class.__name__} got '', which tokenizes to no tokens"):
        pipe("")
    assert pipe("cat")[0][pipe.output_key] == "tac"  # and the next text is served as before


def test_pipeline_by_task_name_from_a_saved_folder(reverser):
    _, _, folder = reverser
    # transformers 5 removed both tasks; the saved config lists ours, which `pipeline` loads as the folder's code.
    for task, key in (("text2text-generation", "generated_text"), ("translation", "translation_text")):
        pipe = transformers.pipeline(task, model=str(folder), trust_remote_code=True)
        assert type(pipe).__module__.startswith("transformers_modules.")
        assert pipe(["cat", "tree"]) == [[{key: "tac"}], [{key: "eert"}]]


PIPELINES_WITHOUT_THE_PACKAGE = """
import transformers
folder = sys.argv[1]
for task in ("text2text-generation", "translation"):
    pipe = transformers.pipeline(task, model=folder, trust_remote_code=True)
    print(task, type(pipe.model).__module__.split(".")[0], pipe("fish", num_beams=2))
"""


def test_pipelines_through_remote_code_without_the_package(reverser, tmp_path):
    _, _, folder = reverser
    result = run_python(PIPELINES_WITHOUT_THE_PACKAGE, tmp_path, str(folder))
    assert result.stdout.splitlines() == [
        "text2text-generation transformers_modules [{'generated_text': 'hsif'}]",
        "translation transformers_modules [{'translation_text': 'hsif'}]",
    ]


def test_seq2seq_trainer_trains_and_evaluates_with_generate(tmp_path):
    tokenizer = char_tokenizer()
    model = MiniTransformerForSeq2SeqLM(make_config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128))
    pairs = reversal_pairs()
    dataset = Dataset.from_dict({
        "input_ids": [tokenizer(source)["input_ids"] for source, _ in pairs],
        "labels": [tokenizer(target)["input_ids"] + [tokenizer.eos_token_id] for _, target in pairs],
    })

    def exact_match(prediction):
        generated = tokenizer.batch_decode(prediction.predictions, skip_special_tokens=True)
        return {"exact_match": sum(g == t for g, (_, t) in zip(generated, pairs)) / len(pairs)}

    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=150, per_device_train_batch_size=12,
        per_device_eval_batch_size=12, learning_rate=3e-3, lr_scheduler_type="constant", logging_steps=50,
        save_strategy="no", disable_tqdm=True, seed=0, predict_with_generate=True, generation_max_length=8,
    )
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset,
                             data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
                             compute_metrics=exact_match, processing_class=tokenizer)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_loss"] < 0.1 * before["eval_loss"], (before, after)
    assert before["eval_exact_match"] == 0.0 and after["eval_exact_match"] == 1.0, (before, after)


def test_lora_wraps_self_and_cross_attention_and_generates_through_peft(reverser):
    from peft import LoraConfig, TaskType, get_peft_model

    model, tokenizer, folder = reverser
    base = MiniTransformerForSeq2SeqLM.from_pretrained(folder).eval()
    lora = LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    peft_model = get_peft_model(base, lora)
    # 2 encoder layers x 1 attention + 2 decoder layers x 2 attentions (self, cross), each q and v, each A and B.
    trainable = [name for name, param in peft_model.named_parameters() if param.requires_grad]
    assert len(trainable) == (2 + 4) * 2 * 2 and any("cross_attn.q_proj.lora_A" in name for name in trainable)
    inputs = tokenizer(["bird", "sand"], return_tensors="pt", padding=True)
    # LoRA's B starts at zero: the adapted model generates what the trained model does.
    generated = peft_model.generate(**inputs, max_new_tokens=8)
    assert tokenizer.batch_decode(generated, skip_special_tokens=True) == ["drib", "dnas"]
