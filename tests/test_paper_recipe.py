"""`scripts/train.py --recipe paper` and its flags: label smoothing (transformers' LabelSmoother) on the training loss
only, Adam betas (0.9, 0.98) and eps 1e-9 without weight decay, transformers' inverse_sqrt schedule after warmup, and
the paper's decoding for seq2seq (beam 4, length penalty 0.6, each output at most its input's length + 50).
"""

import json
import math
import random
import shlex
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, GenerationConfig, StoppingCriteriaList

from hf_minitransformer import MiniTransformerForSeq2SeqLM
from hf_minitransformer.training.evaluation import SourceLengthLimit

from .conftest import (
    ROOT,
    TINY_ARGS,
    TINY_OVERRIDES,
    load_script,
    make_config,
    read_log,
    read_summary,
    reset_accelerate,
)


train = load_script("train")


# No Hub, a private datasets cache, one thread and a fresh accelerate state for every in-process run.
pytestmark = pytest.mark.usefixtures("isolated_train_runs")


def run(tmp_path, name: str, *argv: str) -> tuple[dict, list[dict]]:
    out = tmp_path / name
    train.main([*TINY_ARGS, *argv, "--output_dir", str(out)])
    reset_accelerate()
    records = read_log(out)
    return read_summary(out), [r for r in records if "loss" in r]


def test_paper_recipe_sets_its_flags_and_explicit_flags_win():
    args = train.parse_args(["--recipe", "paper"]).optimization
    assert (args.label_smoothing_factor, args.adam_beta1, args.adam_beta2, args.adam_epsilon, args.weight_decay,
            args.lr_scheduler_type) == (0.1, 0.9, 0.98, 1e-9, 0.0, "inverse_sqrt")
    args = train.parse_args(["--recipe", "paper", "--adam_beta2", "0.99", "--lr_scheduler_type",
                             "linear"]).optimization
    assert (args.adam_beta2, args.lr_scheduler_type, args.label_smoothing_factor) == (0.99, "linear", 0.1)
    default = train.parse_args([]).optimization
    assert (default.label_smoothing_factor, default.adam_beta2, default.adam_epsilon, default.weight_decay,
            default.lr_scheduler_type) == (0.0, 0.95, 1e-8, 0.1, "cosine")
    model = torch.nn.Linear(2, 2)
    optimizer = train.build_optimizer(model, train.parse_args(["--recipe", "paper"]).optimization)
    groups = [(group["betas"], group["eps"], group["weight_decay"]) for group in optimizer.param_groups]
    assert groups == [((0.9, 0.98), 1e-9, 0.0)] * 2


@pytest.mark.parametrize("argv, message", [
    (["--label_smoothing_factor", "1.0"], "--label_smoothing_factor must lie in [0, 1), got 1.0"),
    (["--adam_beta2", "-0.1"], "--adam_beta2 must lie in [0, 1), got -0.1"),
    (["--adam_epsilon", "0"], "--adam_epsilon must be a positive number, got 0.0"),
    (["--adam_epsilon", "nan"], "--adam_epsilon must be a positive number, got nan"),
])
def test_bad_recipe_values_are_value_errors_before_any_work(tmp_path, argv, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        train.main([*TINY_ARGS, *argv, "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("task", ["clm", "mlm", "seq2seq"])
def test_label_smoothing_changes_the_training_loss_only(tmp_path, task):
    """With a learning rate of 1e-12 the weights do not move measurably, so the runs differ only in how the loss is
    taken. Smoothing eps gives (1 - eps) CE + eps (mean over the vocabulary of -log p): eps = 1e-6 must log the plain
    loss (so the smoother sees the labels aligned as the model's own loss does, shifted for clm), and the loss must
    move linearly with eps. The evaluation loss stays the plain cross-entropy in every run. (Large initial weights
    make the predictions peaked: on near-uniform predictions smoothing changes almost nothing.)"""
    common = ["--task", task, "--config_overrides", f"{TINY_OVERRIDES},initializer_range=0.5",
              "--max_train_steps", "2", "--learning_rate", "1e-12", "--logging_steps", "1",
              "--max_eval_generate_samples", "2", "--max_source_length", "48", "--max_target_length", "12",
              "--max_corpus_bytes", "200000" if task == "seq2seq" else "60000"]
    runs = {eps: run(tmp_path, f"eps{eps}", *common, *(["--label_smoothing_factor", str(eps)] if eps else []))
            for eps in (0.0, 1e-6, 0.1, 0.2)}
    losses = {eps: [record["loss"] for record in log] for eps, (_, log) in runs.items()}
    for step in range(2):
        assert losses[1e-6][step] == pytest.approx(losses[0.0][step], rel=1e-5)
        assert abs(losses[0.1][step] - losses[0.0][step]) > 1e-2
        assert losses[0.2][step] - losses[0.1][step] == pytest.approx(losses[0.1][step] - losses[0.0][step],
                                                                      rel=1e-3)
    eval_losses = [summary["final_eval"]["loss"] for summary, _ in runs.values()]
    assert eval_losses == pytest.approx([eval_losses[0]] * 4, rel=1e-6)


def test_inverse_sqrt_schedule_after_linear_warmup(tmp_path):
    _, log = run(tmp_path, "paper", "--recipe", "paper", "--learning_rate", "1e-3", "--num_warmup_steps", "4",
                 "--max_train_steps", "9", "--logging_steps", "1")
    learning_rates = [record["lr"] for record in log]
    # After s optimizer steps: s / warmup of the peak during warmup, then peak * sqrt(warmup / s).
    expected = [1e-3 * (s / 4 if s < 4 else math.sqrt(4 / s)) for s in range(1, 10)]
    assert learning_rates == pytest.approx(expected, rel=1e-6)


# --- the paper's decoding (§6.1) ------------------------------------------------------------------------------------

def test_paper_decoding_evaluates_and_saves_beam_4_length_penalty_0_6_and_source_plus_50(tmp_path):
    out = tmp_path / "paper"
    train.main([*TINY_ARGS, "--task", "seq2seq", "--embedded_task", "dates", "--recipe", "paper", "--max_train_steps",
                "2", "--max_eval_generate_samples", "4", "--output_dir", str(out)])
    summary = read_summary(out)
    generation = summary["generation"]
    # The longest target is the longest source plus 50, cut at the decoder's 64 positions (TINY_ARGS' preset: 256).
    assert (generation["num_beams"], generation["length_penalty"], generation["max_length_offset"],
            generation["max_new_tokens"]) == (4, 0.6, 50, 256)
    assert summary["sacrebleu_signatures"]["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|")
    saved = GenerationConfig.from_pretrained(out)
    assert (saved.num_beams, saved.length_penalty, saved.max_new_tokens) == (4, 0.6, 256)
    flags = train.parse_args(["--recipe", "paper", "--generation_num_beams", "2", "--generation_length_penalty",
                              "1"]).evaluation
    assert (flags.generation_num_beams, flags.generation_length_penalty, flags.generation_max_length_offset) \
        == (2, 1.0, 50)  # explicit flags win


@pytest.mark.parametrize("num_beams", [1, 4])
def test_each_target_stops_at_its_own_source_length_plus_the_offset(num_beams):
    config = make_config(is_encoder_decoder=True)
    model = MiniTransformerForSeq2SeqLM(config).eval()
    source_lengths = torch.tensor([3, 9, 6])
    input_ids = torch.randint(3, config.vocab_size, (3, 9))
    attention_mask = (torch.arange(9) < source_lengths[:, None]).long()  # right padding: 3, 9 and 6 tokens
    limit = SourceLengthLimit(source_lengths, offset=2, prompt_length=1)
    # Padding and end-of-sequence suppressed: only the limit (or max_new_tokens) ends a sequence.
    generated = model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=num_beams,
                               max_new_tokens=20, stopping_criteria=StoppingCriteriaList([limit]),
                               suppress_tokens=[config.pad_token_id, config.eos_token_id], do_sample=False)
    # Finished rows are filled up to the longest with padding (greedy) or end-of-sequence tokens (beam search).
    new_tokens = (~torch.isin(generated[:, 1:], torch.tensor([config.pad_token_id, config.eos_token_id]))).sum(-1)
    assert new_tokens.tolist() == (source_lengths + 2).tolist()


# --- the README's command for the paper's base model, at toy scale --------------------------------------------------

def readme_paper_command() -> list[str]:
    """The arguments of train.py in the README's "Reproducing the paper's base model" command."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Reproducing the paper's base model"):]
    start = section.index("```bash\n") + len("```bash\n")
    block = section[start:section.index("\n```", start)]
    words = shlex.split(block.replace("\\\n", " "))
    return words[words.index("scripts/train.py") + 1:]


def write_toy_wmt14(folder: Path) -> Path:
    """Pairs laid out as the Hub's wmt14 is: a `de-en` configuration of train/validation/test splits, each row one
    `translation` column of {"de": ..., "en": ...}."""
    words = {"the": "die", "house": "Haus", "is": "ist", "small": "klein", "big": "groß", "old": "alt", "a": "ein"}
    rng = random.Random(0)
    for split, count in (("train", 60), ("validation", 6), ("test", 8)):
        rows = []
        for _ in range(count):
            english = rng.choices(list(words), k=rng.randint(2, 6))
            rows.append({"translation": {"en": " ".join(english), "de": " ".join(words[w] for w in english)}})
        (folder / "de-en").mkdir(parents=True, exist_ok=True)
        (folder / "de-en" / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    files = "".join(f"  - split: {name}\n    path: de-en/{name}.jsonl\n" for name in ("train", "validation", "test"))
    (folder / "README.md").write_text(f"---\nconfigs:\n- config_name: de-en\n  data_files:\n{files}---\n")
    return folder


def test_the_readmes_paper_command_runs_at_toy_scale(tmp_path):
    args = readme_paper_command()
    # The README's flags, with a toy copy of the data and a model, vocabulary, run and batches to match.
    toy = {"--dataset_name": str(write_toy_wmt14(tmp_path / "wmt14")), "--model_config": "tiny",
           "--vocab_size": "300", "--max_source_length": "32", "--max_target_length": "32",
           "--max_tokens_per_batch": "96", "--max_train_steps": "6", "--num_warmup_steps": "2",
           "--checkpointing_steps": "1", "--max_eval_generate_samples": "8", "--output_dir": str(tmp_path / "run")}
    flags = dict(zip(args[::2], args[1::2], strict=True))  # every flag of the command takes a value
    assert all(flag.startswith("--") for flag in flags) and toy.keys() <= flags.keys()
    flags.update(toy, **{"--config_overrides": TINY_OVERRIDES, "--report_to": "none"})
    train.main([word for flag, value in flags.items() for word in (flag, value)])
    summary = read_summary(tmp_path / "run")
    assert summary["data"]["validation_pairs"] == 8  # newstest2014's place: the test split
    generation = summary["generation"]
    assert (generation["num_beams"], generation["length_penalty"], generation["max_length_offset"]) == (4, 0.6, 50)
    assert summary["sacrebleu_signatures"]["bleu"].startswith("nrefs:1|")
    averaged = summary["averaged_checkpoints"]
    assert averaged["checkpoints"] == [f"checkpoint-{step}" for step in range(2, 7)]  # the last 5
    assert averaged["final_eval"].keys() == summary["final_eval"].keys() >= {"bleu", "chrf", "exact_match"}
    assert AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "run" / "averaged").config.vocab_size == 300
