"""A run never loses or mixes its output: scripts/train.py's output folder, lock, checkpoint verification, and every
argument checked before any work, with `error: ...` messages instead of tracebacks.

In-process runs (`train.main`) use a tiny config and a 60 kB slice of the embedded corpus; the two tests that need
real processes (a second run on a folder in use, the command-line messages) are few and short.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer, BertConfig

from hf_minitransformer.training import tracking
from hf_minitransformer.training.tasks import TASKS

from .conftest import (
    SCRIPTS,
    TINY_ARGS,
    TINY_OVERRIDES,
    TWO_CPU_PROCESSES,
    edit_summary,
    load_script,
    read_log,
    read_summary,
    reset_accelerate,
    run_python,
    run_script,
    script_env,
    training_output,
    use_private_datasets_cache,
)


train = load_script("train")
show_model = load_script("show_model")
benchmark = load_script("benchmark")
# No Hub, a private datasets cache, one thread and a fresh accelerate state for every in-process run.
pytestmark = pytest.mark.usefixtures("isolated_train_runs")
# Every kind of file a checkpoint holds (one process, no sharding).
CHECKPOINT_FILES = ("model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl",
                    "trainer_state.json", "run_args.json", "tokenizer.json", "tokenizer_config.json", "config.json",
                    "generation_config.json", "manifest.json")


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- 1. a used output folder ---------------------------------------------------------------------------------------

def test_a_finished_output_dir_is_refused_and_left_untouched(tmp_path):
    out = tmp_path / "run"
    train.main([*TINY_ARGS, "--max_train_steps", "2", "--checkpointing_steps", "1", "--output_dir", str(out)])
    before = files_of(out)
    reset_accelerate()
    with pytest.raises(ValueError, match=r"--output_dir '.*run' already holds files \(checkpoints, config.json, "
                                         r".*\)\. Pass --overwrite_output_dir to replace that run, "
                                         r"--resume_from_checkpoint latest to continue it, or another --output_dir"):
        train.main([*TINY_ARGS, "--vocab_size", "280", "--max_train_steps", "1", "--output_dir", str(out)])
    assert files_of(out) == before


def test_overwrite_replaces_every_file_of_the_earlier_run(tmp_path):
    out = tmp_path / "run"
    train.main([*TINY_ARGS, "--max_train_steps", "2", "--checkpointing_steps", "1", "--output_dir", str(out)])
    (out / "notes.txt").write_text("mine")
    reset_accelerate()
    train.main([*TINY_ARGS, "--vocab_size", "280", "--max_train_steps", "1", "--overwrite_output_dir",
                "--output_dir", str(out)])
    assert not (out / "checkpoints").exists()  # the earlier run's checkpoints are gone with it
    assert len(AutoTokenizer.from_pretrained(out)) == AutoConfig.from_pretrained(out).vocab_size == 280
    assert read_summary(out)["optimizer_steps"] == 1
    steps = [record.get("step") for record in read_log(out)]
    assert max(step or 0 for step in steps) == 1  # the log holds this run only
    assert (out / "notes.txt").read_text() == "mine"  # files the script did not write stay


def test_a_run_that_fails_leaves_no_tokenizer_beside_another_runs_model(tmp_path, monkeypatch):
    out = tmp_path / "run"
    train.main([*TINY_ARGS, "--max_train_steps", "2", "--output_dir", str(out)])
    reset_accelerate()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C after the data and the tokenizer are ready

    monkeypatch.setattr(train, "train_loop", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train.main([*TINY_ARGS, "--vocab_size", "280", "--max_train_steps", "2", "--overwrite_output_dir",
                    "--output_dir", str(out)])
    left = {p.name for p in out.iterdir()}
    assert not left & {"model.safetensors", "config.json", "tokenizer.json", "training_summary.json"}, left


# --- 2. two runs on one folder -------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.two_processes
def test_a_second_run_on_a_folder_in_use_is_refused_on_every_rank_and_a_killed_run_leaves_no_stuck_lock(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, str(SCRIPTS / "train.py"), *TINY_ARGS, "--max_train_steps", "100000",
                              "--max_train_seconds", "200", "--output_dir", str(out)], env=script_env(tmp_path),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not ((out / ".train.lock").is_file() and (out / ".train.lock").read_text().startswith("pid")):
            assert first.poll() is None and time.time() < deadline, "the first run never took its lock"
            time.sleep(0.1)
        # The second run is launched as two processes: the main one finds the lock taken, and both must stop.
        second = run_script(tmp_path, "train.py", *TINY_ARGS, "--vocab_size", "280", "--max_train_steps", "2",
                            "--output_dir", str(out), launcher=TWO_CPU_PROCESSES, use_cpu=True, check=False)
        assert second.returncode != 0
        message = f"error: --output_dir '{out}' is in use by another training run (pid {first.pid} on "
        assert second.stderr.count(message) == 2, second.stderr[-3000:]  # one line from each rank
        assert first.poll() is None, "the second run disturbed the first"
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # no chance to release anything: the OS drops the lock
        first.wait()
    run_script(tmp_path, "train.py", *TINY_ARGS, "--max_train_steps", "2", "--overwrite_output_dir",
               "--output_dir", str(out))
    assert read_summary(out)["optimizer_steps"] == 2


# --- 3. checkpoints verified on resume -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory) -> Path:
    """A finished 2-step run with checkpoint-1 and checkpoint-2."""
    tmp = tmp_path_factory.mktemp("checkpointed")
    with pytest.MonkeyPatch.context() as patch:
        use_private_datasets_cache(patch, tmp / "datasets_cache")
        train.main([*TINY_ARGS, "--max_train_steps", "2", "--checkpointing_steps", "1",
                    "--output_dir", str(tmp / "run")])
    reset_accelerate()
    return tmp / "run"


def copy_of(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def test_the_list_of_checkpoint_files_is_complete(checkpointed_run):
    assert {p.name for p in (checkpointed_run / "checkpoints" / "checkpoint-2").iterdir()} == set(CHECKPOINT_FILES)


def test_a_checkpoint_describes_its_model_as_the_final_save_does(checkpointed_run):
    checkpoint = checkpointed_run / "checkpoints" / "checkpoint-2"
    # The final config.json also names the code files (auto_map) and the dtype, which save_pretrained adds.
    final = json.loads((checkpointed_run / "config.json").read_text())
    assert json.loads((checkpoint / "config.json").read_text()) == {
        k: v for k, v in final.items() if k not in ("auto_map", "dtype")}
    assert (checkpoint / "generation_config.json").read_text() == (
        checkpointed_run / "generation_config.json").read_text()


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_truncated_checkpoint_file_is_named_before_any_work(checkpointed_run, tmp_path, name):
    run = copy_of(checkpointed_run, tmp_path)
    file = run / "checkpoints" / "checkpoint-2" / name
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    expected = (r"its manifest.json is unreadable" if name == "manifest.json" else
                rf"{name} has \d+ bytes where \d+ were saved \(truncated or overwritten\)")
    with pytest.raises(ValueError, match=rf"--resume_from_checkpoint '.*checkpoint-2' cannot be resumed: {expected}"):
        train.main([*TINY_ARGS, "--max_train_steps", "3", "--resume_from_checkpoint",
                    str(run / "checkpoints" / "checkpoint-2"), "--output_dir", str(run)])
    assert not (run / "train_log.jsonl").read_text().count('"step": 3')  # nothing ran


def test_a_corrupted_checkpoint_file_of_the_right_size_is_caught_by_its_checksum(checkpointed_run, tmp_path):
    run = copy_of(checkpointed_run, tmp_path)
    file = run / "checkpoints" / "checkpoint-2" / "optimizer.bin"
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"optimizer.bin does not match the checksum it was saved with \(corrupted or "
                                         r"replaced\)"):
        train.main([*TINY_ARGS, "--resume_from_checkpoint", str(run / "checkpoints" / "checkpoint-2"),
                    "--output_dir", str(run)])


def test_latest_falls_back_to_the_last_intact_checkpoint_and_says_so(checkpointed_run, tmp_path, capsys):
    run = copy_of(checkpointed_run, tmp_path)
    (run / "checkpoints" / "checkpoint-2" / "trainer_state.json").unlink()
    train.main([*TINY_ARGS, "--max_train_steps", "2", "--resume_from_checkpoint", "latest", "--output_dir", str(run)])
    err = capsys.readouterr().err
    assert (f"warning: --resume_from_checkpoint latest: skipped {run}/checkpoints/checkpoint-2 (trainer_state.json "
            f"is missing). Resuming from {run}/checkpoints/checkpoint-1 instead.") in err
    assert read_summary(run)["optimizer_steps"] == 2


def test_latest_with_no_intact_checkpoint_lists_what_is_wrong_with_each(checkpointed_run, tmp_path):
    run = copy_of(checkpointed_run, tmp_path)
    (run / "checkpoints" / "checkpoint-2" / "optimizer.bin").unlink()
    (run / "checkpoints" / "checkpoint-1" / "manifest.json").unlink()
    with pytest.raises(ValueError, match=r"no checkpoint in .* can be resumed: .*checkpoint-2 \(optimizer.bin is "
                                         r"missing\); .*checkpoint-1 \(it has no manifest.json, which is written "
                                         r"last: it was not saved completely\)"):
        train.main([*TINY_ARGS, "--resume_from_checkpoint", "latest", "--output_dir", str(run)])


# --- 4. the model config is validated before any work --------------------------------------------------------------

def write_configs(tmp_path: Path):
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(
        tmp_path / "bert")
    (tmp_path / "truncated.json").write_text('{"hidden_size": 32, "num_hidden_lay')


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--config_overrides", "hidden_act=tanh"],
         "The model config of --model_config 'tiny' with --config_overrides 'hidden_act=tanh' is invalid: "
         "`hidden_act` must be one of 'relu', 'gelu', 'gelu_new', 'silu', got 'tanh'"),
        (["--config_overrides", "hidden_size=33"], r"`hidden_size` \(33\) must be divisible by `num_attention_heads`"),
        (["--config_overrides", "foo"], "--config_overrides: 'foo' is not key=value"),
        (["--config_overrides", "hiden_size=32"], "--config_overrides: unknown config field 'hiden_size'"),
        (["--model_config", "{tmp}/bert/config.json"], r"config.json' is the config of a 'bert' model"),
        (["--init_from", "{tmp}/bert"], r"--init_from .* is the config of a 'bert' model"),
        (["--model_config", "{tmp}/truncated.json"], r"--model_config '.*truncated.json' is not a valid JSON file"),
    ],
)
def test_a_bad_model_config_is_refused_before_any_work(tmp_path, extra, message):
    write_configs(tmp_path)
    argv = [*TINY_ARGS, *[a.format(tmp=tmp_path) for a in extra], "--output_dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match=message):
        train.main(argv)
    assert not (tmp_path / "out").exists()


# --- 5. every argument checked before any work ---------------------------------------------------------------------

@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--learning_rate", "-1"], r"--learning_rate must be a positive number, got -1.0"),
        (["--lr_scheduler_type", "cosinus"], "--lr_scheduler_type 'cosinus' is not a transformers scheduler; choose "
                                             "one of linear, cosine"),
        (["--task", "mlm", "--mlm_probability", "1.5"], r"--mlm_probability must lie in \(0, 1\), got 1.5"),
        (["--num_warmup_steps", "-5"], "--num_warmup_steps must be zero or positive, got -5"),
        (["--weight_decay", "-0.1"], "--weight_decay must be zero or positive, got -0.1"),
        (["--max_grad_norm", "-1"], "--max_grad_norm must be zero or positive, got -1.0"),
        (["--vocab_size", "100"], r"--vocab_size must be at least 259 \(256 byte tokens plus the special tokens\)"),
        (["--report_to", "tensorbored"], "--report_to 'tensorbored' is not an accelerate tracker"),
        (["--tokenizer_name", "./no/such/tokenizer"], "--tokenizer_name './no/such/tokenizer': no such folder"),
        (["--tokenizer_name", "{tmp}"], r"--tokenizer_name '.*' is not a tokenizer folder"),
    ],
)
def test_a_bad_argument_is_refused_before_any_work(tmp_path, extra, message):
    argv = [*TINY_ARGS, *[a.format(tmp=tmp_path) for a in extra], "--output_dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match=message):
        train.main(argv)
    assert not (tmp_path / "out").exists()


def test_a_tracker_that_is_not_installed_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "get_available_trackers", lambda: [])  # as without wandb (and anything else)
    with pytest.raises(ValueError, match=r"--report_to wandb: the wandb package is not installed \(pip install "
                                         r"wandb\); installed trackers: none"):
        train.main([*TINY_ARGS, "--report_to", "wandb", "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("name", "content", "message"), [
    ("binary.txt", bytes(range(128, 256)) * 20, r"Could not read '.*binary.txt' as text data: UnicodeDecodeError"),
    ("broken.jsonl", b'{"text": "a"}\n{"text": ', r"Could not read '.*broken.jsonl' as json data"),
])
def test_an_unreadable_data_file_is_named(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        train.main([*TINY_ARGS, "--train_file", str(tmp_path / name), "--output_dir", str(tmp_path / "out")])


# --- 6. evaluation with nothing to score ---------------------------------------------------------------------------

def test_an_evaluation_that_scores_nothing_keeps_the_model_and_records_no_number(tmp_path):
    out = tmp_path / "mlm"
    train.main([*TINY_ARGS, "--task", "mlm", "--mlm_probability", "0.00001", "--per_device_eval_batch_size", "1",
                "--max_train_steps", "2", "--output_dir", str(out)])
    assert (out / "model.safetensors").is_file()
    summary = read_summary(out)  # strict JSON: no NaN or Infinity
    assert summary["final_eval"] == {"loss": None, "perplexity": None}


# --- 7. a run never deletes what it reads, and a resume repeats the run it continues -------------------------------

@pytest.mark.parametrize("flag", ["--init_from", "--tokenizer_name"])
def test_a_run_never_writes_over_the_folder_it_reads_from(tmp_path, flag):
    source = training_output(tmp_path / "run" / "source")
    before = files_of(source)
    for output_dir in (source, source.parent):  # the folder itself, or one that holds it
        with pytest.raises(ValueError, match=rf"{flag} '.*source' lies in --output_dir '.*', which this run "
                                             r"writes: its files would be replaced \(or deleted by "
                                             r"--overwrite_output_dir\)"):
            train.main([*TINY_ARGS, flag, str(source), "--overwrite_output_dir", "--output_dir", str(output_dir)])
    assert files_of(source) == before


def test_overwrite_deletes_nothing_until_the_arguments_and_the_data_are_checked(tmp_path):
    out = training_output(tmp_path / "run")
    before = files_of(out)
    (tmp_path / "binary.txt").write_bytes(bytes(range(128, 256)) * 20)  # fails when the data is read
    with pytest.raises(ValueError, match="Could not read '.*binary.txt' as text data"):
        train.main([*TINY_ARGS, "--train_file", str(tmp_path / "binary.txt"), "--overwrite_output_dir",
                    "--output_dir", str(out)])
    assert files_of(out) == {**before, ".train.lock": (out / ".train.lock").read_bytes()}


def test_the_working_tokenizer_of_a_failed_run_does_not_block_the_next_run(tmp_path):
    out = tmp_path / "run"
    (out / ".train-tokenizer").mkdir(parents=True)  # what a run that failed before its final save leaves
    (out / ".train-tokenizer" / "tokenizer.json").write_text("{}")
    train.main([*TINY_ARGS, "--max_train_steps", "1", "--output_dir", str(out)])
    assert not (out / ".train-tokenizer").exists()
    # The saved tokenizer cuts at the model's positions (a trained tokenizer knows no length of its own).
    max_length = AutoTokenizer.from_pretrained(out).model_max_length
    assert max_length == AutoConfig.from_pretrained(out).max_position_embeddings == 256


@pytest.mark.parametrize(("saved_task", "task"), [("clm", "seq2seq"), ("seq2seq", "clm"), ("mlm", "clm")])
def test_init_from_a_model_of_another_task_is_refused(tmp_path, saved_task, task):
    source = training_output(tmp_path / "source", task=saved_task)
    objective = TASKS[saved_task].objective
    with pytest.raises(ValueError, match=rf"--init_from '.*source' holds a {re.escape(objective)} \(--task "
                                         rf"{saved_task}\), but --task {task} trains .*: its weights would not load"):
        train.main([*TINY_ARGS, "--task", task, "--init_from", str(source), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


INIT_ARGS = ["--block_size", "32", "--max_corpus_bytes", "60000", "--report_to", "none"]


def test_init_from_with_overrides_that_change_weight_shapes_is_refused(tmp_path):
    source = training_output(tmp_path / "source")
    with pytest.raises(ValueError, match=r"--config_overrides 'intermediate_size=64' changes the shapes of the "
                                         r"weights of --init_from '.*source' \(model.layers.0.feed_forward.fc1.bias "
                                         r"\(37,\) -> \(64,\); .*\): they would not load"):
        train.main([*INIT_ARGS, "--init_from", str(source), "--config_overrides", "intermediate_size=64",
                    "--output_dir", str(tmp_path / "out")])


def test_init_from_continues_from_the_saved_weights(tmp_path):
    source = training_output(tmp_path / "source")
    out = tmp_path / "out"
    # A dropout change keeps every shape; one step at a learning rate ~0 (the first warmup step) moves nothing.
    model = train.main([*INIT_ARGS, "--init_from", str(source), "--config_overrides", "attention_dropout=0.1",
                        "--max_train_steps", "1", "--num_warmup_steps", "1000", "--output_dir", str(out)])
    saved = TASKS["clm"].model_class.from_pretrained(source)
    for name, weight in saved.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], weight, atol=1e-5, rtol=0)
    assert model.config.attention_dropout == 0.1
    assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(source).get_vocab()


@pytest.mark.parametrize(("extra", "changed"), [
    (["--learning_rate", "0.01"], "--learning_rate 0.001 -> 0.01"),
    (["--config_overrides", TINY_OVERRIDES + ",hidden_act=gelu"], f"--config_overrides '{TINY_OVERRIDES}' -> "
                                                                 f"'{TINY_OVERRIDES},hidden_act=gelu'"),
    (["--block_size", "16"], "--block_size 32 -> 16"),
    (["--per_device_train_batch_size", "8"], "--per_device_train_batch_size 16 -> 8"),
    (["--seed", "1"], "--seed 42 -> 1"),
    (["--gradient_accumulation_steps", "2"], "--gradient_accumulation_steps 1 -> 2"),
])
def test_a_resume_with_arguments_that_shape_the_run_is_refused(checkpointed_run, tmp_path, extra, changed):
    run = copy_of(checkpointed_run, tmp_path)
    with pytest.raises(ValueError, match=rf"--resume_from_checkpoint '.*checkpoint-2' was saved by a run with other "
                                         rf"arguments \({re.escape(changed)}\): resuming would mix two trainings"):
        train.main([*TINY_ARGS, "--max_train_steps", "3", "--resume_from_checkpoint", "latest", *extra,
                    "--output_dir", str(run)])
    assert read_summary(run)["optimizer_steps"] == 2  # nothing ran


def test_a_resume_may_go_on_longer_and_log_evaluate_and_checkpoint_differently(checkpointed_run, tmp_path):
    run = copy_of(checkpointed_run, tmp_path)
    train.main([*TINY_ARGS, "--max_train_steps", "3", "--logging_steps", "1", "--eval_steps", "5",
                "--checkpointing_steps", "3", "--resume_from_checkpoint", "latest", "--output_dir", str(run)])
    assert read_summary(run)["optimizer_steps"] == 3
    with pytest.raises(ValueError, match=r"--max_train_steps 1 is below the 3 steps '.*checkpoint-3' has done"):
        train.main([*TINY_ARGS, "--max_train_steps", "1", "--resume_from_checkpoint", "latest",
                    "--output_dir", str(run)])


@pytest.mark.parametrize(("extra", "message"), [
    (["--output_dir", "{tmp}/file.txt"], "--output_dir '.*file.txt' is a file, not a folder"),
    (["--embedded_task", "dates"], "--embedded_task dates is a task of --task seq2seq .* but --task is clm; add "
                                   "--task seq2seq"),
    (["--task", "seq2seq", "--embedded_task", "dates", "--train_file", "{tmp}/pairs.jsonl"],
     "--embedded_task dates picks the pairs used without data, but --train_file '.*pairs.jsonl' gives the data"),
    (["--dataset_name", "wikitext", "--dataset_config_name", "wikitext-2-raw-v1"],
     r"--dataset_name 'wikitext' \(config 'wikitext-2-raw-v1'\) cannot be loaded: .* The Hub is offline "
     r"\(HF_HUB_OFFLINE\) and no copy of it is cached"),
    (["--validation_split_name", "test"], "--validation_split_name 'test' picks a split of a --dataset_name; local "
                                          "files and the embedded data have train and validation only"),
    (["--max_train_seconds", "nan"], "--max_train_seconds must be positive when given, got nan"),
    (["--max_train_seconds", "inf"], "--max_train_seconds must be positive when given, got inf"),
    (["--config_overrides", "layer_norm_eps=Infinity"], "`layer_norm_eps` must be a finite number, got inf"),
    (["--config_overrides", "bos_token_id=5"], "--config_overrides sets bos_token_id, which the 'tiny' preset takes "
                                               r"from the tokenizer \(the override would be ignored\)"),
])
def test_more_bad_arguments_are_refused_before_any_work(tmp_path, extra, message):
    (tmp_path / "file.txt").write_text("not a folder")
    (tmp_path / "pairs.jsonl").write_text('{"source": "a", "target": "b"}\n')
    argv = [*TINY_ARGS, "--output_dir", str(tmp_path / "out"), *[a.format(tmp=tmp_path) for a in extra]]
    with pytest.raises(ValueError, match=message):
        train.main(argv)
    assert not (tmp_path / "out").exists()


# --- 8. messages, not tracebacks -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_commands_print_nothing_but_their_own_output(tmp_path):
    """What a new user sees first: `train.py --help` is its usage alone, and importing the package and loading a saved
    model print nothing. (torchao, a dependency of the int8 route until it moved to PyTorch's own kernels, logged four
    lines at every import of transformers, --help included.)"""
    result = run_script(tmp_path, "train.py", "--help", timeout=120)
    assert result.stdout.startswith("usage: train.py") and result.stderr == ""
    code = ("import hf_minitransformer, transformers\n"
            "config = hf_minitransformer.MiniTransformerConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, "
            "num_attention_heads=4, intermediate_size=37)\n"
            "transformers.AutoModelForCausalLM.from_config(config).save_pretrained(sys.argv[1])\n"
            "print(type(transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1])).__name__)\n")
    result = run_python(code, tmp_path, str(tmp_path / "model"), block_package=False)
    assert result.stdout.strip() == "MiniTransformerForCausalLM"
    # transformers' own progress bars of saving and loading are all there is.
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines and all(line.startswith(("Writing model shards:", "Loading weights:")) for line in lines), lines


@pytest.mark.parametrize(("script", "args", "message"), [
    ("train.py", ["--learning_rate", "-1", "--output_dir", "{tmp}/out"],
     "error: --learning_rate must be a positive number, got -1.0."),
    ("validate_hub_folder.py", [], "validate_hub_folder.py: error: the following arguments are required: "
                                   "staged_dir, expected"),
])
def test_command_lines_print_an_error_line_without_a_traceback(tmp_path, script, args, message):
    result = run_script(tmp_path, script, *[a.format(tmp=tmp_path) for a in args], timeout=120, check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == message and "Traceback" not in result.stderr


@pytest.mark.parametrize(("module", "args", "message"), [
    ("show_model", ["out", "--batch_size", "0"], "error: --batch_size must be positive, got 0"),
    ("show_model", ["out", "--temperature", "-1"],
     "error: --temperature must be zero (greedy) or positive, got -1.0"),
    ("show_model", ["out", "--prompt", ""], "error: --prompt must not be empty: the sample continues it (e.g. "
                                            "--prompt 'def ')"),
    ("benchmark", ["--seq_len", "0"], "error: --seq_len must be positive, got 0"),
    ("benchmark", ["--presets", "tiny", "--seq_len", "512"],
     "error: --seq_len 512 (or --prompt_len + --new_tokens 48) exceeds the tiny preset's max_position_embeddings "
     "(256)"),
])
def test_script_arguments_are_checked_when_parsed(capsys, module, args, message):
    script = {"show_model": show_model, "benchmark": benchmark}[module]
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(args)
    assert exit_info.value.code != 0
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message)


def test_show_model_refuses_a_folder_that_mixes_two_runs(tmp_path):
    source = training_output(tmp_path / "run")
    edit_summary(source, data__tokenizer_size=4096)  # the tokenizer in the folder is not the one training used
    with pytest.raises(ValueError, match=r"mixes two runs: its tokenizer has \d+ tokens, but the model's "
                                         r"vocab_size is \d+ and training used a tokenizer of 4096\."):
        show_model.main([str(source)])


def test_show_model_refuses_a_file_that_is_not_the_one_the_run_saved(tmp_path):
    source, other = training_output(tmp_path / "run"), training_output(tmp_path / "other")
    (other / "model.safetensors").replace(source / "model.safetensors")  # same size: the old checks passed it
    with pytest.raises(ValueError, match=r"'.*run' does not hold the files its run saved: model.safetensors does not "
                                         r"match the checksum it was saved with \(corrupted or replaced\)\. The "
                                         r"folder mixes two runs or a file changed since training"):
        show_model.main([str(source)])


@pytest.mark.slow  # a fresh interpreter: ~10 s
def test_show_model_prints_one_error_line_for_a_summary_that_is_not_an_object(tmp_path):
    source = training_output(tmp_path / "run")
    (source / "training_summary.json").write_text("[]")
    result = run_script(tmp_path, "show_model.py", str(source), timeout=120, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: '{source}/training_summary.json' holds a JSON list, not the object (key: value) it must hold.")

