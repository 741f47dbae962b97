"""The model among the transformers ecosystem: pipelines (installed package and remote code), Trainer, LoRA (peft).

A tiny word-level tokenizer is built here with `tokenizers`; nothing is downloaded.
"""

import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from torch import nn
from transformers import PreTrainedTokenizerFast, Trainer, TrainingArguments, pipeline

import hf_minitransformer

from .conftest import make_config, run_python


SENTENCES = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "the bird sang a song",
    "my cat likes the dog",
]
# Ids 0, 1, 2 are the config's pad, bos and eos ids.
SPECIAL_TOKENS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
WORDS = sorted({word for sentence in SENTENCES for word in sentence.split()})
DETERMINERS, VERBS = {"the", "a", "my"}, {"sat", "ran", "sang", "likes"}
TAGS = {0: "DET", 1: "NOUN", 2: "VERB"}  # no "O": the token-classification pipeline would hide it


def build_tokenizer(append_eos: bool = True) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over SENTENCES: "[CLS] words [SEP]" for encoders, "[CLS] words" to generate from."""
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]" if append_eos else "[CLS] $A",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        bos_token="[CLS]",
        eos_token="[SEP]",
    )
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    return tokenizer


VOCAB_SIZE = len(SPECIAL_TOKENS) + len(WORDS)


# Matrices this small gain nothing from a second thread, and on a busy 2-CPU machine OpenMP threads waiting on each
# other made the Trainer tests 30x slower (15 s instead of 0.4 s each).
pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------------------------------
# Pipelines. Each task: the head serving it, the call, a summary of the pipeline's answer as (keys, values), and the
# same summary computed directly from the model, which the pipeline must reproduce.

PIPELINE_HEADS = {
    "fill-mask": ("MiniTransformerForMaskedLM", {}),
    "text-generation": ("MiniTransformerForCausalLM", {}),
    "text-classification": ("MiniTransformerForSequenceClassification", dict(id2label={0: "NEG", 1: "POS"})),
    "token-classification": ("MiniTransformerForTokenClassification", dict(id2label=TAGS)),
    "feature-extraction": ("MiniTransformerModel", {}),
}
PIPELINE_CALLS = {
    "fill-mask": ("the [MASK] sat on the mat", dict(top_k=3)),
    "text-generation": ("the cat", dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, return_tensors=True)),
    "text-classification": (["the cat sat", "a dog ran in the park"], dict(top_k=None)),
    "token-classification": ("the cat sat on the mat", {}),
    "feature-extraction": ("the cat sat", {}),
}


def summarize(task: str, answer) -> tuple[list, torch.Tensor]:
    """A pipeline's answer as (discrete keys, float values), whether it came from this process or from JSON."""
    if task == "fill-mask":
        return [r["token"] for r in answer], torch.tensor([r["score"] for r in answer])
    if task == "text-generation":
        return answer[0]["generated_token_ids"], torch.tensor([])
    if task == "text-classification":
        rows = [row for text_rows in answer for row in text_rows]
        return [r["label"] for r in rows], torch.tensor([r["score"] for r in rows])
    if task == "token-classification":
        return [(r["index"], r["entity"]) for r in answer], torch.tensor([float(r["score"]) for r in answer])
    return [], torch.tensor(answer)  # feature-extraction: (1, seq, hidden)


@torch.no_grad()
def direct(task: str, model: nn.Module, tokenizer) -> tuple[list, torch.Tensor]:
    """What the pipeline should answer, computed with the model and tokenizer by hand."""
    text, kwargs = PIPELINE_CALLS[task]
    if task == "text-generation":
        encoded = tokenizer(text, return_tensors="pt")
        generate_kwargs = {k: v for k, v in kwargs.items() if k != "return_tensors"}
        return model.generate(**encoded, **generate_kwargs)[0].tolist(), torch.tensor([])
    if task == "text-classification":
        keys, values = [], []
        for sentence in text:
            probs = model(**tokenizer(sentence, return_tensors="pt")).logits[0].softmax(-1)
            order = probs.argsort(descending=True)
            keys += [model.config.id2label[int(i)] for i in order]
            values.append(probs[order])
        return keys, torch.cat(values)
    encoded = tokenizer(text, return_tensors="pt")
    out = model(**encoded)
    if task == "fill-mask":
        position = encoded.input_ids[0].tolist().index(tokenizer.mask_token_id)
        top = out.logits[0, position].softmax(-1).topk(kwargs["top_k"])
        return top.indices.tolist(), top.values
    if task == "token-classification":
        probs = out.logits[0, 1:-1].softmax(-1)  # the words, without [CLS] and [SEP]
        scores, labels = probs.max(-1)
        return [(index + 1, TAGS[int(label)]) for index, label in enumerate(labels)], scores
    return [], out.last_hidden_state


def assert_same_answer(actual: tuple[list, torch.Tensor], expected: tuple[list, torch.Tensor]):
    assert actual[0] == expected[0]
    torch.testing.assert_close(actual[1].float(), expected[1].float(), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def pipeline_models(tmp_path_factory) -> dict[str, tuple[nn.Module, PreTrainedTokenizerFast, Path]]:
    """{task: (model, tokenizer, folder)}: each head with its tokenizer, also saved together to a folder."""
    served = {}
    for task, (class_name, overrides) in PIPELINE_HEADS.items():
        torch.manual_seed(0)
        model = getattr(hf_minitransformer, class_name)(make_config(vocab_size=VOCAB_SIZE, **overrides)).eval()
        tokenizer = build_tokenizer(append_eos=task != "text-generation")
        folder = tmp_path_factory.mktemp(task)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        served[task] = (model, tokenizer, folder)
    return served


@pytest.mark.parametrize("source", ["object", "folder"])
@pytest.mark.parametrize("task", PIPELINE_HEADS)
def test_pipeline_with_the_package_installed(pipeline_models, task, source):
    model, tokenizer, folder = pipeline_models[task]
    if source == "object":
        pipe = pipeline(task, model=model, tokenizer=tokenizer)
    else:
        pipe = pipeline(task, model=str(folder))
        assert type(pipe.model) is type(model)  # served by the registered package, not by remote code
    text, kwargs = PIPELINE_CALLS[task]
    assert_same_answer(summarize(task, pipe(text, **kwargs)), direct(task, model, tokenizer))


def test_text_generation_pipeline_returns_prompt_and_continuation(pipeline_models):
    model, tokenizer, _ = pipeline_models["text-generation"]
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    kwargs = {k: v for k, v in PIPELINE_CALLS["text-generation"][1].items() if k != "return_tensors"}
    generated = pipe("the cat", **kwargs)[0]["generated_text"]
    token_ids, _ = direct("text-generation", model, tokenizer)
    prompt_length = len(tokenizer("the cat").input_ids)
    assert len(token_ids) == prompt_length + 4
    # The pipeline glues the prompt to the decoded continuation (word-level decoding puts no space between them).
    assert generated.startswith("the cat")
    assert generated.endswith(tokenizer.decode(token_ids[prompt_length:], skip_special_tokens=True))


REMOTE_CODE_PIPELINES = """
import json
from transformers import pipeline

folders, calls = json.loads(sys.argv[1]), json.loads(sys.argv[2])
answers, modules = {}, {}
for task, folder in folders.items():
    pipe = pipeline(task, model=folder, trust_remote_code=True)
    text, kwargs = calls[task]
    answers[task] = pipe(text, **kwargs)
    modules[task] = type(pipe.model).__module__
print(json.dumps(dict(answers=answers, modules=modules), default=float))
"""


def test_pipelines_through_remote_code_without_the_package(pipeline_models, tmp_path):
    folders = {task: str(folder) for task, (_, _, folder) in pipeline_models.items()}
    result = run_python(REMOTE_CODE_PIPELINES, tmp_path, json.dumps(folders), json.dumps(PIPELINE_CALLS))
    reply = json.loads(result.stdout.strip().splitlines()[-1])
    for task, (model, tokenizer, _) in pipeline_models.items():
        assert reply["modules"][task].startswith("transformers_modules."), reply["modules"][task]
        assert_same_answer(summarize(task, reply["answers"][task]), direct(task, model, tokenizer))


# ---------------------------------------------------------------------------------------------------------------------
# Training: Trainer on every head, LoRA on the attention projections.


def training_data(task: str) -> dict[str, list]:
    """Four sentences padded to one length, with labels for `task`; small enough to memorise in a few steps."""
    tokenizer = build_tokenizer()
    encoded = tokenizer(SENTENCES, padding="max_length", max_length=8)
    input_ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]
    if task == "mlm":
        # Mask the second word of every sentence; only it is scored.
        labels = [[-100] * len(ids) for ids in input_ids]
        masked = [list(ids) for ids in input_ids]
        for row, ids in enumerate(input_ids):
            labels[row][2], masked[row][2] = ids[2], tokenizer.mask_token_id
        return dict(input_ids=masked, attention_mask=attention_mask, labels=labels)
    if task == "clm":
        labels = [[i if m else -100 for i, m in zip(ids, mask)] for ids, mask in zip(input_ids, attention_mask)]
        return dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    if task == "seq-cls":
        return dict(input_ids=input_ids, attention_mask=attention_mask, labels=[int("cat" in s) for s in SENTENCES])

    # token-cls: a part-of-speech tag per word, -100 on special tokens and padding
    def tag(word: str) -> int:
        return -100 if word in SPECIAL_TOKENS else 0 if word in DETERMINERS else 2 if word in VERBS else 1

    labels = [[tag(word) for word in tokenizer.convert_ids_to_tokens(ids)] for ids in input_ids]
    return dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


TRAINED_HEADS = {
    "mlm": ("MiniTransformerForMaskedLM", {}),
    "clm": ("MiniTransformerForCausalLM", {}),
    "seq-cls": ("MiniTransformerForSequenceClassification", dict(num_labels=2)),
    "token-cls": ("MiniTransformerForTokenClassification", dict(num_labels=3)),
}


@pytest.mark.parametrize("task", TRAINED_HEADS)
def test_trainer_lowers_the_loss_of_every_head(task, tmp_path):
    class_name, overrides = TRAINED_HEADS[task]
    model = getattr(hf_minitransformer, class_name)(make_config(vocab_size=VOCAB_SIZE, **overrides))
    dataset = Dataset.from_dict(training_data(task))
    args = TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to=[],
        max_steps=25,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        logging_steps=5,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    before = trainer.evaluate(dataset)["eval_loss"]
    trainer.train()
    after = trainer.evaluate(dataset)["eval_loss"]
    assert trainer.state.global_step == 25
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 5 and logged[-1] < logged[0], logged
    assert after < 0.5 * before, (before, after)


def test_lora_trains_only_adapters_on_attention_projections():
    torch.manual_seed(0)
    model = hf_minitransformer.MiniTransformerForMaskedLM(make_config(vocab_size=VOCAB_SIZE))
    frozen = {name: param.detach().clone() for name, param in model.named_parameters()}
    lora_config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    peft_model = get_peft_model(model, lora_config)

    for layer in model.model.layers:
        attention = layer.self_attn
        assert isinstance(attention.q_proj, LoraLayer) and isinstance(attention.v_proj, LoraLayer)
        assert type(attention.k_proj) is nn.Linear and type(attention.o_proj) is nn.Linear
    trainable = [name for name, param in peft_model.named_parameters() if param.requires_grad]
    # 2 layers x {q_proj, v_proj} x {lora_A, lora_B}
    assert len(trainable) == 8 and all("lora_A" in name or "lora_B" in name for name in trainable), trainable

    batch = {key: torch.tensor(value) for key, value in training_data("mlm").items()}
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=5e-2)
    peft_model.train()
    losses = []
    for _ in range(20):
        loss = peft_model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    # Rank-4 adapters on q/v of a random model learn slowly (about 3.0 -> 2.7 here); a drop of 0.1 is far from noise,
    # and without gradients reaching the adapters the loss would not move at all (lora_B starts at zero).
    assert losses[-1] < losses[0] - 0.1, losses

    # The base weights never moved; merging the adapters folds them into q_proj/v_proj with the same outputs.
    peft_model.eval()
    with torch.no_grad():
        adapted = peft_model(**batch).logits
    merged = peft_model.merge_and_unload()
    assert type(merged) is hf_minitransformer.MiniTransformerForMaskedLM
    for name, param in merged.named_parameters():
        if "q_proj" in name or "v_proj" in name:
            assert not torch.equal(param, frozen[name]), name
        else:
            assert torch.equal(param, frozen[name]), name
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, adapted, rtol=1e-4, atol=1e-5)


def test_lora_causal_lm_generates_through_peft():
    torch.manual_seed(0)
    model = hf_minitransformer.MiniTransformerForCausalLM(make_config(vocab_size=VOCAB_SIZE)).eval()
    prompt = build_tokenizer(append_eos=False)(["the cat", "a dog"], return_tensors="pt")
    expected = model.generate(**prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    lora_config = LoraConfig(r=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora_config).eval()
    # lora_B starts at zero, so the adapted model must generate exactly what the base model does, cache included.
    generated = peft_model.generate(**prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert generated.shape == (2, prompt.input_ids.shape[1] + 5)
    assert torch.equal(generated, expected)
