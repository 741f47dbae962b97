"""scripts/train.py and scripts/show_model.py: a CPU smoke run, overfitting one batch, and the input errors; for the
seq2seq task also the embedded docstring and date tasks, custom columns, exact resume and a two-process evaluation.

The smoke runs launch real subprocesses (marked slow); the rest calls `train.main(argv)` in this process on a tiny
config (hidden 32, 2 layers) and a small slice of the embedded corpus.
"""

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM, AutoTokenizer

from hf_minitransformer.data import Seq2SeqDataArgs, load_seq2seq_datasets, train_bpe_tokenizer

from .conftest import (
    TINY_ARGS,
    TWO_CPU_PROCESSES,
    load_script,
    make_config,
    read_log,
    read_summary,
    run_script,
    train_straight_and_resumed,
)


SENTENCE = "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat by the door.\n"


train = load_script("train")
show_model = load_script("show_model")


# No Hub, a private datasets cache, one thread and a fresh accelerate state for every in-process run.
pytestmark = pytest.mark.usefixtures("isolated_train_runs")


@pytest.mark.slow
def test_causal_smoke_run_saves_a_model_that_loads_back(tmp_path):
    out = tmp_path / "run"
    run_script(tmp_path, "train.py", *TINY_ARGS, "--max_train_steps", "6", "--per_device_train_batch_size", "4",
               "--logging_steps", "2", "--output_dir", str(out))
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "train_log.jsonl",
                 "modeling_minitransformer.py"):
        assert (out / name).is_file(), name
    summary = read_summary(out)
    assert summary["optimizer_steps"] == 6
    assert summary["tokens_seen"] == 6 * 4 * 32
    assert math.isfinite(summary["final_eval"]["perplexity"])
    assert summary["final_eval"]["perplexity"] == pytest.approx(math.exp(summary["final_eval"]["loss"]))
    assert summary["data"]["source"].startswith("python-stdlib-source")
    records = read_log(out)
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == [2, 4, 6]
    assert all({"lr", "tokens_per_s", "grad_norm"} <= r.keys() for r in train_records)

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "MiniTransformerForCausalLM"
    assert len(tokenizer) == model.config.vocab_size == 300
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id

    # A fresh process rebuilds the validation split and must find the perplexity recorded by training.
    shown = run_script(tmp_path, "show_model.py", str(out), "--max_new_tokens", "5").stdout
    assert f"perplexity {summary['final_eval']['perplexity']:.2f} (recorded" in shown
    assert "Sample (prompt 'def '):" in shown


@pytest.mark.slow
def test_masked_lm_smoke_run(tmp_path):
    out = tmp_path / "mlm"
    run_script(tmp_path, "train.py", *TINY_ARGS, "--task", "mlm", "--max_train_steps", "3",
               "--per_device_train_batch_size", "4", "--output_dir", str(out))
    model = AutoModelForMaskedLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "MiniTransformerForMaskedLM"
    assert not model.config.is_decoder
    assert tokenizer.mask_token == "<mask>"
    assert math.isfinite(read_summary(out)["final_eval"]["loss"])


def test_overfits_one_batch(tmp_path):
    """One block, seen over and over: the loop (accumulate, clip, schedule) must drive its loss to about zero."""
    data = tmp_path / "one_block.txt"
    data.write_text(SENTENCE)
    argv = [*TINY_ARGS, "--train_file", str(data), "--validation_file", str(data), "--block_size", "32",
            "--max_train_steps", "100", "--learning_rate", "1e-2", "--num_warmup_steps", "5",
            "--gradient_accumulation_steps", "2", "--output_dir", str(tmp_path / "run")]
    model = train.main(argv)
    summary = read_summary(tmp_path / "run")
    assert summary["data"]["train_blocks"] == 1
    assert summary["final_eval"]["loss"] < 0.1, summary["final_eval"]
    assert summary["final_eval"]["perplexity"] < 1.11
    assert isinstance(model, torch.nn.Module)


def test_the_summary_records_a_checksum_of_every_file_the_final_save_wrote(tmp_path):
    out = tmp_path / "run"
    train.main([*TINY_ARGS, "--max_train_steps", "2", "--output_dir", str(out)])
    files = read_summary(out)["files"]
    run_own = {"training_summary.json", "train_log.jsonl", ".train.lock"}  # written around the save, not by it
    assert set(files) == {p.name for p in out.iterdir() if p.is_file()} - run_own
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "modeling_minitransformer.py", "configuration_minitransformer.py"} <= set(files)
    for name, recorded in files.items():
        data = (out / name).read_bytes()
        assert recorded == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name


def write_data(path: Path, rows: list[str]):
    """`rows` as a data file of the type its suffix names (one line per row for text files)."""
    from datasets import Dataset

    if path.suffix == ".txt":
        path.write_text("".join(row + "\n" for row in rows))
    elif path.suffix == ".jsonl":
        Dataset.from_dict({"text": rows}).to_json(path)
    elif path.suffix == ".csv":
        Dataset.from_dict({"text": rows}).to_csv(path, index=False)
    else:
        Dataset.from_dict({"text": rows}).to_parquet(path)


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv", ".parquet"])
def test_trains_on_each_local_file_type(tmp_path, suffix):
    rows = [f"{i}: {SENTENCE.strip()} Line {i * 7 % 13} of the file." for i in range(200)]
    write_data(tmp_path / f"train{suffix}", rows)
    out = tmp_path / "run"
    train.main([*TINY_ARGS, "--train_file", str(tmp_path / f"train{suffix}"), "--max_train_steps", "2",
                "--output_dir", str(out)])
    summary = read_summary(out)
    assert summary["data"]["source"] == f"local file train{suffix}"  # portable: no local path
    assert summary["data"]["train_blocks"] > 10 * summary["data"]["validation_blocks"] > 0  # 5 % held out
    assert summary["optimizer_steps"] == 2


def test_dataset_name_loads_a_dataset_folder(tmp_path):
    """--dataset_name goes through `datasets.load_dataset`, which also reads a local dataset folder offline."""
    (tmp_path / "corpus").mkdir()
    write_data(tmp_path / "corpus" / "train.jsonl", [f"{i} {SENTENCE}" for i in range(100)])
    write_data(tmp_path / "corpus" / "validation.jsonl", [f"{SENTENCE} {i}" for i in range(20)])
    out = tmp_path / "run"
    train.main([*TINY_ARGS, "--dataset_name", str(tmp_path / "corpus"), "--max_train_steps", "2",
                "--output_dir", str(out)])
    summary = read_summary(out)
    assert summary["data"]["source"] == "local dataset folder corpus"
    assert summary["data"]["validation_blocks"] > 0


def test_max_train_seconds_stops_early_then_evaluates_and_saves(tmp_path, caplog, capsys):
    out = tmp_path / "run"
    train.main([*TINY_ARGS, "--max_train_steps", "100000", "--max_train_seconds", "1", "--output_dir", str(out)])
    summary = read_summary(out)
    assert summary["stopped_early"]
    assert 0 < summary["optimizer_steps"] < summary["planned_optimizer_steps"] == 100000
    # The run's last line says plainly that its figures are not the planned run's.
    assert caplog.records[-1].getMessage() == "[RANK 0] " + (
        f"Training stopped early: {summary['optimizer_steps']} of 100000 planned steps, when --max_train_seconds 1 "
        "ran out. The figures above are this shorter run's; the README's figures need all planned steps (a faster "
        "or less busy machine, or a larger --max_train_seconds).")
    assert math.isfinite(summary["final_eval"]["loss"])
    assert (out / "model.safetensors").is_file()
    # show_model.py on the folder ends with the same line (main_job.sh runs it last).
    last_line = caplog.records[-1].getMessage().removeprefix("[RANK 0] ")
    capsys.readouterr()
    show_model.main([str(out), "--max_new_tokens", "3"])
    assert capsys.readouterr().out.strip().splitlines()[-1] == last_line


def test_show_model_masks_as_the_masked_lm_run_masked(tmp_path, monkeypatch):
    out = tmp_path / "run"
    train.main([*TINY_ARGS, "--task", "mlm", "--mlm_probability", "0.4", "--max_train_steps", "2",
                "--output_dir", str(out)])
    probabilities = []

    class RecordingCollator(show_model.DataCollatorForLanguageModeling):
        def __post_init__(self):
            super().__post_init__()
            probabilities.append(self.mlm_probability)

    monkeypatch.setattr(show_model, "DataCollatorForLanguageModeling", RecordingCollator)
    show_model.main([str(out)])
    assert probabilities == [0.4]  # it rescored at 0.15, whatever the run used


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--train_file", "{tmp}/missing.txt"], "does not exist"),
        (["--train_file", "{tmp}/empty.txt"], "is empty"),
        (["--train_file", "{tmp}/data.xml"], "unknown type '.xml'"),
        (["--train_file", "{tmp}/data.txt", "--validation_file", "{tmp}/data.csv"], "same format"),
        (["--block_size", "300"], "exceeds the model's max_position_embeddings 256"),
        (["--model_config", "huge"], "Unknown model preset 'huge'"),
        (["--model_config", "{tmp}/missing.json"], "does not exist"),
        (["--resume_from_checkpoint", "latest"], "there is no checkpoint in"),
        (["--resume_from_checkpoint", "{tmp}"], "is not a checkpoint folder"),
        (["--init_from", "{tmp}"], "is not a saved model folder"),
        (["--max_train_steps", "0"], "--max_train_steps must be positive"),
        (["--task", "seq2seq", "--train_file", "{tmp}/data.txt"], "is a text file"),
        (["--task", "seq2seq", "--max_source_length", "300"],
         "--max_source_length 300 exceeds the model's max_position_embeddings 256"),
        (["--task", "seq2seq", "--generation_max_new_tokens", "257"], "--generation_max_new_tokens 257 exceeds"),
        (["--task", "seq2seq", "--max_target_length", "1"], "--max_target_length must be at least 2"),
        (["--task", "seq2seq", "--generation_num_beams", "0"], "--generation_num_beams must be positive"),
    ],
)
def test_bad_input_is_a_value_error_before_any_work(tmp_path, extra, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "data.xml").write_text("<text>hello</text>")
    (tmp_path / "data.txt").write_text(SENTENCE)
    (tmp_path / "data.csv").write_text("text\nhello\n")
    argv = [*TINY_ARGS, *[a.format(tmp=tmp_path) for a in extra], "--output_dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match=message):
        train.main(argv)
    assert not (tmp_path / "out").exists()  # refused before creating anything


def test_tokenizer_larger_than_model_vocabulary_is_refused(tmp_path):
    tokenizer = train_bpe_tokenizer(iter([[SENTENCE * 20]]), vocab_size=300, with_mask_token=False)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    config = make_config(vocab_size=100, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    config.to_json_file(tmp_path / "config.json")
    (tmp_path / "data.txt").write_text(SENTENCE * 20)
    argv = ["--model_config", str(tmp_path / "config.json"), "--tokenizer_name", str(tmp_path / "tokenizer"),
            "--train_file", str(tmp_path / "data.txt"), "--block_size", "32", "--report_to", "none",
            "--output_dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match=rf"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is 100"):
        train.main(argv)


def test_masked_lm_needs_a_mask_token(tmp_path):
    tokenizer = train_bpe_tokenizer(iter([[SENTENCE * 20]]), vocab_size=300, with_mask_token=False)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    (tmp_path / "data.txt").write_text(SENTENCE * 20)
    argv = [*TINY_ARGS, "--task", "mlm", "--tokenizer_name", str(tmp_path / "tokenizer"), "--train_file",
            str(tmp_path / "data.txt"), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match="has no mask token"):
        train.main(argv)


def test_fp16_on_cpu_is_refused(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("fp16 is valid on a GPU")
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        train.main([*TINY_ARGS, "--mixed_precision", "fp16", "--output_dir", str(tmp_path / "out")])


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_run_on_gpu(tmp_path, precision):
    out = tmp_path / "run"
    run_script(tmp_path, "train.py", *TINY_ARGS, "--mixed_precision", precision, "--max_train_steps", "5",
               "--output_dir", str(out))
    summary = read_summary(out)
    assert summary["mixed_precision"] == precision
    assert math.isfinite(summary["final_eval"]["loss"])
    # Weights stay float32 under autocast, so the saved model is float32 too.
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.float32


# --- seq2seq: the embedded docstring task, files with named columns, generation metrics ---------------------------

SEQ2SEQ = ["--task", "seq2seq", "--max_corpus_bytes", "200000", "--max_source_length", "64",
           "--max_target_length", "16"]


@pytest.mark.slow
def test_seq2seq_smoke_run_saves_a_model_that_loads_back(tmp_path):
    out = tmp_path / "seq2seq"
    run_script(tmp_path, "train.py", *TINY_ARGS, *SEQ2SEQ, "--max_train_steps", "4", "--per_device_train_batch_size",
               "4", "--eval_steps", "2", "--output_dir", str(out))
    summary = read_summary(out)
    metrics = summary["final_eval"]
    assert summary["task"] == "seq2seq" and summary["optimizer_steps"] == 4
    assert {"loss", "perplexity", "bleu", "chrf", "exact_match"} <= metrics.keys()
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]))
    assert 0 <= metrics["bleu"] <= 100 and 0 <= metrics["exact_match"] <= 1
    assert summary["data"]["source"].startswith("python-stdlib-docstrings")
    assert summary["data"]["train_pairs"] > summary["data"]["validation_pairs"] > 0
    assert summary["generation"]["samples"] == summary["data"]["validation_pairs"]  # fewer than 200
    assert {"prediction", "bleu", "chrf", "exact_match"} <= summary["baselines"]["most_frequent_target"].keys()
    records = read_log(out)
    assert [r["step"] for r in records if "eval_bleu" in r] == [2, 4]

    model = AutoModelForSeq2SeqLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "MiniTransformerForSeq2SeqLM" and model.config.is_encoder_decoder
    assert model.generation_config.decoder_start_token_id == tokenizer.bos_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.max_new_tokens == 16

    shown = run_script(tmp_path, "show_model.py", str(out), "--num_examples", "2").stdout
    assert f"perplexity {metrics['perplexity']:.2f} (recorded" in shown
    assert shown.count("greedy:") == shown.count("beam 4:") == 2


def write_pairs(path: Path, sources: list[str], targets: list[str], columns=("code", "summary")):
    table = Dataset.from_dict({columns[0]: sources, columns[1]: targets})
    table.to_json(path) if path.suffix == ".jsonl" else table.to_csv(path, index=False)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_seq2seq_reads_named_columns_of_a_file(tmp_path, suffix):
    sources = [f"def f{i}(x):\n    return x * {i}\n" for i in range(60)]
    write_pairs(tmp_path / f"pairs{suffix}", sources, [f"Multiply x by {i}." for i in range(60)])
    out = tmp_path / "run"
    train.main([*TINY_ARGS, "--task", "seq2seq", "--train_file", str(tmp_path / f"pairs{suffix}"), "--source_column",
                "code", "--target_column", "summary", "--max_train_steps", "2", "--output_dir", str(out)])
    summary = read_summary(out)
    assert (summary["data"]["train_pairs"], summary["data"]["validation_pairs"]) == (57, 3)  # the last 5 %
    assert summary["generation"]["samples"] == 3
    assert {"loss", "bleu", "chrf", "exact_match"} <= summary["final_eval"].keys()


def test_seq2seq_missing_column_is_a_value_error(tmp_path):
    write_pairs(tmp_path / "pairs.jsonl", ["def f(): return 1"] * 20, ["One."] * 20)
    argv = [*TINY_ARGS, "--task", "seq2seq", "--train_file", str(tmp_path / "pairs.jsonl"), "--target_column",
            "summary", "--output_dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match=r"has no column 'source'; its columns are \['code', 'summary'\]. Pick "
                                         r"one with --source_column"):
        train.main(argv)


def test_seq2seq_overfits_a_few_pairs(tmp_path):
    """Four pairs seen over and over: greedy generation must give back every target exactly."""
    sources = ["def add(a, b):\n    return a + b\n", "def neg(x):\n    return -x\n",
               "def first(items):\n    return items[0]\n", "def is_empty(s):\n    return not s\n"]
    targets = ["Return the sum of a and b.", "Negate x.", "Return the first item.", "Whether s is empty."]
    write_pairs(tmp_path / "pairs.jsonl", sources, targets, columns=("source", "target"))
    data = str(tmp_path / "pairs.jsonl")
    train.main([*TINY_ARGS, "--task", "seq2seq", "--train_file", data, "--validation_file", data, "--max_train_steps",
                "100", "--learning_rate", "1e-2", "--num_warmup_steps", "5", "--per_device_train_batch_size", "2",
                "--gradient_accumulation_steps", "2", "--output_dir", str(tmp_path / "run")])
    summary = read_summary(tmp_path / "run")
    assert summary["final_eval"]["exact_match"] == 1.0, summary["generation"]["examples"]
    assert summary["final_eval"]["bleu"] == pytest.approx(100.0)
    assert summary["final_eval"]["loss"] < 0.1


def test_seq2seq_resumes_exactly(tmp_path):
    """6 steps straight equal 3 steps, a checkpoint, and 3 more after resuming from it."""
    common = [*TINY_ARGS, *SEQ2SEQ, "--max_train_steps", "6", "--per_device_train_batch_size", "4",
              "--gradient_accumulation_steps", "2", "--num_warmup_steps", "2", "--checkpointing_steps", "3"]
    straight, resumed = train_straight_and_resumed(train, tmp_path, common, step=3)
    summaries = [read_summary(d) for d in (straight, resumed)]
    assert summaries[0]["final_eval"] == summaries[1]["final_eval"]
    assert summaries[0]["tokens_seen"] == summaries[1]["tokens_seen"]


def test_train_script_runs_the_date_task(tmp_path):
    out = tmp_path / "dates"
    train.main([*TINY_ARGS, "--task", "seq2seq", "--embedded_task", "dates", "--max_train_steps", "3",
                "--max_eval_generate_samples", "4", "--output_dir", str(out)])
    summary = read_summary(out)
    assert summary["data"]["source"].startswith("dates-to-iso8601: 20000 training dates of 90 years in 19 formats")
    assert (summary["data"]["train_pairs"], summary["data"]["validation_pairs"]) == (20_000, 1_000)
    assert summary["generation"]["samples"] == 4
    assert AutoTokenizer.from_pretrained(out).tokenize("2066-11-25") == list("2066-11-25")  # digits split


@pytest.mark.slow
@pytest.mark.two_processes
def test_seq2seq_generation_metrics_gather_each_pair_once_over_two_processes(tmp_path):
    """5 pairs in batches of 2 over 2 processes: accelerate repeats one to even out the batches, and the gather must
    drop it, keeping the dataset order."""
    out = tmp_path / "ddp"
    run_script(tmp_path, "train.py", *TINY_ARGS, *SEQ2SEQ, "--max_target_length", "128", "--max_train_steps", "2",
               "--per_device_eval_batch_size", "2", "--max_eval_generate_samples", "5", "--output_dir", str(out),
               launcher=TWO_CPU_PROCESSES, use_cpu=True)
    summary = read_summary(out)
    assert summary["num_processes"] == 2 and summary["generation"]["samples"] == 5
    targets = load_seq2seq_datasets(Seq2SeqDataArgs(max_corpus_bytes=200000))["validation"]["target"][:5]
    assert [example["reference"] for example in summary["generation"]["examples"]] == list(targets)


@pytest.mark.parametrize("streaming", [False, True])
def test_seq2seq_reads_fields_of_a_struct_column_and_evaluates_on_the_named_split(tmp_path, streaming):
    """WMT14's layout: one `translation` column of {"en": ..., "de": ...} and train/validation/test splits."""
    data = tmp_path / "wmt_like"
    data.mkdir()
    for split, count in (("train", 40), ("validation", 4), ("test", 6)):
        rows = [{"translation": {"en": f"{split} number {i}", "de": f"{split} Nummer {i}"}} for i in range(count)]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "run"
    streamed = ["--streaming", "--tokenizer_train_samples", "40"] if streaming else []
    train.main([*TINY_ARGS, "--task", "seq2seq", "--dataset_name", str(data), "--source_column", "translation.en",
                "--target_column", "translation.de", "--validation_split_name", "test", "--max_train_steps", "1",
                "--max_target_length", "8", *streamed, "--output_dir", str(out)])
    summary = read_summary(out)
    assert summary["data"]["validation_pairs"] == 6  # the test split
    assert summary["data"]["train_sample_pairs" if streaming else "train_pairs"] == 40
    assert summary["generation"]["examples"][0]["reference"] == "test Nummer 0"
    with pytest.raises(ValueError, match=r"--validation_split_name 'dev': the dataset has no such split; its splits "
                                         r"are train, validation, test"):
        train.main([*TINY_ARGS, "--task", "seq2seq", "--dataset_name", str(data), "--source_column", "translation.en",
                    "--target_column", "translation.de", "--validation_split_name", "dev", "--max_train_steps", "1",
                    *streamed, "--output_dir", str(tmp_path / "dev")])
