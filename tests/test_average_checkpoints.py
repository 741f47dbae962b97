"""Checkpoint averaging: scripts/average_checkpoints.py and train.py's --average_last_checkpoints.

Two tiny in-process runs with three checkpoints each (a causal LM, and an encoder-decoder on four pairs) are shared
by the module. The average is the exact mean of the checkpoints' tensors; the folder is an ordinary model folder that
loads with the Auto classes, and through remote code without the package; whatever cannot be averaged is refused
before anything is written. The slow tests load through remote code in a fresh process, run the command line, and a
2-process FSDP2 run whose checkpoints are sharded.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig

from hf_minitransformer.training.checkpointing import read_checkpoint_weights, write_manifest

from .conftest import (
    ROOT,
    TINY_ARGS,
    load_script,
    read_summary,
    reset_accelerate,
    run_command,
    run_python,
    run_script,
    script_env,
    torch_on_one_thread,
    use_private_datasets_cache,
)


train = load_script("train")
average_checkpoints = load_script("average_checkpoints")
THREE_CHECKPOINTS = ["--max_train_steps", "3", "--checkpointing_steps", "1", "--checkpoints_total_limit", "3",
                     "--num_warmup_steps", "0", "--learning_rate", "1e-2"]
PAIRS = {"def add(a, b):\n    return a + b\n": "Return the sum of a and b.",
         "def neg(x):\n    return -x\n": "Negate x.",
         "def first(items):\n    return items[0]\n": "Return the first item.",
         "def is_empty(s):\n    return not s\n": "Whether s is empty."}


def train_in_process(tmp: Path, argv: list[str]):
    with torch_on_one_thread():
        try:
            with pytest.MonkeyPatch.context() as patch:
                use_private_datasets_cache(patch, tmp / "datasets_cache")
                train.main(argv)
        finally:
            reset_accelerate()


@pytest.fixture(scope="module")
def clm_run(tmp_path_factory) -> Path:
    """A causal LM with checkpoint-1..3; train.py also averages the last one (a mean of one is the model itself)."""
    tmp = tmp_path_factory.mktemp("clm")
    train_in_process(tmp, [*TINY_ARGS, *THREE_CHECKPOINTS, "--average_last_checkpoints", "1",
                           "--output_dir", str(tmp / "run")])
    return tmp / "run"


@pytest.fixture(scope="module")
def seq2seq_run(tmp_path_factory) -> Path:
    """An encoder-decoder with checkpoint-1..3, of which train.py averages all three into OUTPUT_DIR/averaged."""
    tmp = tmp_path_factory.mktemp("seq2seq")
    pairs = tmp / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in PAIRS.items()))
    train_in_process(tmp, [*TINY_ARGS, *THREE_CHECKPOINTS, "--task", "seq2seq", "--train_file", str(pairs),
                           "--validation_file", str(pairs), "--per_device_train_batch_size", "2",
                           "--average_last_checkpoints", "3", "--output_dir", str(tmp / "run")])
    return tmp / "run"


RUNS = {"clm": ("clm_run", AutoModelForCausalLM), "seq2seq": ("seq2seq_run", AutoModelForSeq2SeqLM)}


@pytest.fixture(params=list(RUNS))
def run(request) -> tuple[Path, type]:
    fixture, auto_class = RUNS[request.param]
    return request.getfixturevalue(fixture), auto_class


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    shutil.copytree(run_dir, tmp_path / "run", ignore=shutil.ignore_patterns("averaged"))
    return tmp_path / "run"


def checkpoint(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"checkpoint-{step}"


def mean_of_checkpoints(run_dir: Path, steps: list[int]) -> dict[str, torch.Tensor]:
    """Computed here from the checkpoints' own safetensors files: summed in float64, divided, back to float32."""
    weights = [load_file(checkpoint(run_dir, step) / "model.safetensors") for step in steps]
    return {name: (torch.stack([w[name] for w in weights]).double().sum(dim=0) / len(weights)).float()
            for name in weights[0]}


# --- the average --------------------------------------------------------------------------------------------------

def test_the_average_is_the_exact_mean_of_the_checkpoints(run, tmp_path):
    run_dir, _ = run
    folder = average_checkpoints.main([str(run_dir), "--last", "3", "--output_dir", str(tmp_path / "avg")])
    averaged, expected = load_file(folder / "model.safetensors"), mean_of_checkpoints(run_dir, [1, 2, 3])
    # The weights save_pretrained keeps (tied ones once), as in the run's final model.
    assert averaged.keys() == load_file(run_dir / "model.safetensors").keys() == expected.keys()
    for name, tensor in expected.items():
        assert averaged[name].dtype == torch.float32
        assert torch.equal(averaged[name], tensor), name
    last = load_file(checkpoint(run_dir, 3) / "model.safetensors")
    assert not all(torch.equal(averaged[name], last[name]) for name in averaged)  # training moved the weights
    assert json.loads((folder / "averaged_checkpoints.json").read_text()) == {"averaged": [
        {"checkpoint": f"checkpoint-{step}", "step": step} for step in (1, 2, 3)]}


def test_last_k_takes_the_newest_checkpoints(clm_run, tmp_path):
    folder = average_checkpoints.main([str(clm_run), "--last", "2", "--output_dir", str(tmp_path / "avg")])
    averaged, expected = load_file(folder / "model.safetensors"), mean_of_checkpoints(clm_run, [2, 3])
    assert all(torch.equal(averaged[name], tensor) for name, tensor in expected.items())


def test_the_folder_is_an_ordinary_model_folder_that_loads_with_the_auto_classes(run, tmp_path):
    run_dir, auto_class = run
    folder = average_checkpoints.main([str(run_dir), "--last", "3", "--output_dir", str(tmp_path / "avg")])
    # config (auto_map, architectures, dtype), generation config and code files as the run's final save writes them
    for name in ("config.json", "generation_config.json", "tokenizer.json", "configuration_minitransformer.py",
                 "modeling_minitransformer.py"):
        assert (folder / name).read_bytes() == (run_dir / name).read_bytes(), name
    model = auto_class.from_pretrained(folder)
    state = model.state_dict()
    for name, tensor in load_file(folder / "model.safetensors").items():
        assert torch.equal(state[name], tensor)
    if model.config.tie_word_embeddings:
        assert model.lm_head.weight is model.get_input_embeddings().weight
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert len(tokenizer) == model.config.vocab_size
    assert model.generation_config.max_new_tokens == GenerationConfig.from_pretrained(run_dir).max_new_tokens


REMOTE_CODE = """
import json
import torch
import transformers

results = {}
for auto_name, folder in json.loads(sys.argv[1]).items():
    model = getattr(transformers, auto_name).from_pretrained(folder, trust_remote_code=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    inputs = tokenizer(["def add(a, b):"], return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    results[auto_name] = dict(module=type(model).__module__, state_dict=model.state_dict(), generated=generated)
results["loaded_packages"] = sorted(name for name, mod in sys.modules.items()
                                    if name.startswith("hf_minitransformer") and mod is not None)
torch.save(results, sys.argv[2])
"""


@pytest.mark.slow
def test_the_folder_loads_through_remote_code_without_the_package(clm_run, seq2seq_run, tmp_path):
    folders = {auto_class.__name__: average_checkpoints.main([str(run_dir), "--last", "3",
                                                              "--output_dir", str(tmp_path / name)])
               for name, run_dir, auto_class in (("clm", clm_run, AutoModelForCausalLM),
                                                 ("seq2seq", seq2seq_run, AutoModelForSeq2SeqLM))}
    run_python(REMOTE_CODE, tmp_path, json.dumps({k: str(v) for k, v in folders.items()}), str(tmp_path / "out.pt"))
    results = torch.load(tmp_path / "out.pt")
    assert results.pop("loaded_packages") == []
    for auto_name, folder in folders.items():
        remote = results[auto_name]
        assert remote["module"].startswith("transformers_modules.")
        model = getattr(transformers, auto_name).from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        for name, tensor in model.state_dict().items():
            assert torch.equal(remote["state_dict"][name], tensor), name
        inputs = tokenizer(["def add(a, b):"], return_tensors="pt")
        assert torch.equal(remote["generated"], model.generate(**inputs, max_new_tokens=5, do_sample=False))


def test_checkpoints_without_a_config_take_the_runs_final_one(clm_run, tmp_path):
    """Checkpoints saved before they held config.json and generation_config.json."""
    run_dir = copy_of(clm_run, tmp_path)
    for step in (1, 2, 3):
        for name in ("config.json", "generation_config.json", "manifest.json"):
            (checkpoint(run_dir, step) / name).unlink()
        write_manifest(checkpoint(run_dir, step))
    folder = average_checkpoints.main([str(run_dir), "--last", "3", "--output_dir", str(tmp_path / "avg")])
    for name in ("config.json", "generation_config.json"):
        assert (folder / name).read_bytes() == (clm_run / name).read_bytes()
    expected = mean_of_checkpoints(clm_run, [1, 2, 3])
    assert all(torch.equal(load_file(folder / "model.safetensors")[n], t) for n, t in expected.items())
    for name in ("config.json", "training_summary.json"):  # an unfinished run: no final model either
        (run_dir / name).unlink()
    with pytest.raises(ValueError, match=r"checkpoint-3 holds no config.json .* and neither does .*run"):
        average_checkpoints.main([str(run_dir), "--last", "3", "--output_dir", str(tmp_path / "avg2")])
    assert not (tmp_path / "avg2").exists()


# --- refusals: nothing is written ---------------------------------------------------------------------------------

def edit_checkpoint(run_dir: Path, step: int, name: str, edit):
    """Change a file of a checkpoint and record it in its manifest: the checkpoint still verifies."""
    path = checkpoint(run_dir, step) / name
    if name.endswith(".json"):
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    else:
        save_file(edit(load_file(path)), path)
    write_manifest(checkpoint(run_dir, step))


def assert_refused(run_dir: Path, destination: Path, message: str, *extra: str):
    with pytest.raises(ValueError, match=message):
        average_checkpoints.main([str(run_dir), "--output_dir", str(destination), *extra])
    assert not destination.exists()
    assert not list(destination.parent.glob(f".{destination.name}.partial-*"))


@pytest.mark.parametrize(("last", "message"), [
    ("0", r"--last must be at least 1 \(the number of checkpoints to average\), got 0"),
    ("-2", r"--last must be at least 1 \(the number of checkpoints to average\), got -2"),
    ("4", r"--last 4: .*checkpoints' holds only 3 \(checkpoint-1, checkpoint-2, checkpoint-3\); pass "
          r"--last 3 or fewer"),
])
def test_a_number_of_checkpoints_the_run_cannot_give_is_refused(clm_run, tmp_path, last, message):
    assert_refused(clm_run, tmp_path / "avg", message, "--last", last)


def test_a_folder_without_checkpoints_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_refused(tmp_path / "empty", tmp_path / "avg", r"--last 5: .*empty.checkpoints' holds no checkpoint; "
                                                          r"train with --checkpointing_steps")


def test_a_damaged_checkpoint_is_refused(clm_run, tmp_path):
    run_dir = copy_of(clm_run, tmp_path)
    file = checkpoint(run_dir, 2) / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[-1] ^= 1
    file.write_bytes(bytes(data))
    assert_refused(run_dir, tmp_path / "avg", r"checkpoint-2 cannot be averaged: model.safetensors does not match the "
                                              r"checksum it was saved with \(corrupted or replaced\)", "--last", "3")
    # The newer ones alone still average.
    average_checkpoints.main([str(run_dir), "--last", "1", "--output_dir", str(tmp_path / "avg")])


def test_checkpoints_of_different_runs_are_refused(clm_run, tmp_path):
    run_dir = copy_of(clm_run, tmp_path)
    edit_checkpoint(run_dir, 1, "run_args.json", lambda args: {**args, "learning_rate": 0.5})
    assert_refused(run_dir, tmp_path / "avg", r"checkpoint-1 and .*checkpoint-3 were saved by runs with other "
                                              r"arguments \(--learning_rate 0.5 -> 0.01\)", "--last", "3")
    average_checkpoints.main([str(run_dir), "--last", "2", "--output_dir", str(tmp_path / "avg")])


def test_what_a_resume_may_change_does_not_make_another_run(clm_run, tmp_path):
    run_dir = copy_of(clm_run, tmp_path)
    edit_checkpoint(run_dir, 1, "run_args.json", lambda args: {**args, "max_train_steps": 2, "logging_steps": 1})
    average_checkpoints.main([str(run_dir), "--last", "3", "--output_dir", str(tmp_path / "avg")])


def test_checkpoints_that_do_not_record_their_arguments_average_with_a_warning(clm_run, tmp_path, capsys):
    run_dir = copy_of(clm_run, tmp_path)
    (checkpoint(run_dir, 1) / "run_args.json").unlink()
    (checkpoint(run_dir, 1) / "manifest.json").unlink()
    write_manifest(checkpoint(run_dir, 1))
    edit_checkpoint(run_dir, 2, "run_args.json", lambda args: {**args, "seed": 7})  # still compared with the newest
    assert_refused(run_dir, tmp_path / "avg", r"checkpoint-2 and .*checkpoint-3 were saved by runs with other "
                                              r"arguments \(--seed 7 -> 42\)", "--last", "3")
    assert "warning: no run_args.json in checkpoint-1 (saved before checkpoints recorded" in capsys.readouterr().err
    edit_checkpoint(run_dir, 2, "run_args.json", lambda args: {**args, "seed": 42})
    average_checkpoints.main([str(run_dir), "--last", "3", "--output_dir", str(tmp_path / "avg")])


def test_checkpoints_of_different_shapes_or_weights_are_refused(clm_run, tmp_path):
    run_dir = copy_of(clm_run, tmp_path)
    name = "model.layers.0.feed_forward.fc1.bias"
    edit_checkpoint(run_dir, 1, "model.safetensors", lambda w: {**w, name: torch.zeros(7)})
    assert_refused(run_dir, tmp_path / "avg", rf"{name} is torch.float32 \(7,\) in .*checkpoint-1 but torch.float32 "
                                              r"\(64,\) in .*checkpoint-2: they are not checkpoints of one model",
                   "--last", "3")
    edit_checkpoint(run_dir, 1, "model.safetensors", lambda w: {k: v for k, v in w.items() if k != name})
    assert_refused(run_dir, tmp_path / "avg", rf"checkpoint-1 and .*checkpoint-2 hold different weights \({name} in "
                                              r"one only\)", "--last", "3")


def test_weights_that_are_not_the_configs_are_refused(clm_run, tmp_path):
    run_dir = copy_of(clm_run, tmp_path)
    for step in (2, 3):
        edit_checkpoint(run_dir, step, "config.json", lambda config: {**config, "intermediate_size": 48})
    message = r"not those of the model their config.json describes \(MiniTransformerForCausalLM; .*other shapes: \['"
    assert_refused(run_dir, tmp_path / "avg", message, "--last", "2")


@pytest.mark.parametrize(("where", "message"), [
    ("{run}", r"--output_dir .* is \(or holds\) the run folder"),
    ("{run}/..", r"--output_dir .* is \(or holds\) the run folder"),
    ("{run}/checkpoints/averaged", r"lies in .*checkpoints', among the checkpoints a run rotates"),
    ("{run}/checkpoints/checkpoint-3/averaged", r"lies in .*checkpoints', among the checkpoints a run rotates"),
    ("{tmp}/keep", r"--output_dir .*keep' already exists; pass --overwrite_output_dir"),
    ("{tmp}/file.txt", r"--output_dir .*file.txt' is a file, not a folder"),
])
def test_an_output_dir_that_would_replace_or_mix_with_a_run_is_refused(clm_run, tmp_path, where, message):
    run_dir = copy_of(clm_run, tmp_path)
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "mine.txt").write_text("kept")
    (tmp_path / "file.txt").write_text("kept")
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    destination = Path(where.format(run=run_dir, tmp=tmp_path))
    with pytest.raises(ValueError, match=message):
        average_checkpoints.main([str(run_dir), "--last", "3", "--output_dir", str(destination)])
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before
    assert (tmp_path / "keep" / "mine.txt").read_text() == "kept" and (tmp_path / "file.txt").read_text() == "kept"


def test_overwrite_output_dir_replaces_an_earlier_average(clm_run, tmp_path):
    (tmp_path / "avg").mkdir()
    (tmp_path / "avg" / "stale.txt").write_text("old")
    folder = average_checkpoints.main([str(clm_run), "--last", "3", "--output_dir", str(tmp_path / "avg"),
                                       "--overwrite_output_dir"])
    assert not (folder / "stale.txt").exists() and (folder / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["avg"]  # no temporary folder left beside it


def test_the_default_output_dir_is_output_dir_averaged(clm_run, tmp_path):
    run_dir = copy_of(clm_run, tmp_path)
    assert average_checkpoints.main([str(run_dir), "--last", "3"]) == run_dir / "averaged"


# --- train.py --average_last_checkpoints ---------------------------------------------------------------------------

def test_train_py_averages_and_evaluates_the_last_k_checkpoints(seq2seq_run, tmp_path):
    summary = read_summary(seq2seq_run)
    averaged = summary["averaged_checkpoints"]
    assert averaged["folder"] == "averaged"
    assert averaged["checkpoints"] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert averaged["final_eval"].keys() == summary["final_eval"].keys() >= {"loss", "bleu", "exact_match"}
    assert averaged["final_eval"]["loss"] != summary["final_eval"]["loss"]
    # The same folder as the command line writes from the same checkpoints.
    folder = average_checkpoints.main([str(seq2seq_run), "--last", "3", "--output_dir", str(tmp_path / "avg")])
    for name in ("model.safetensors", "config.json", "generation_config.json", "averaged_checkpoints.json"):
        assert (folder / name).read_bytes() == (seq2seq_run / "averaged" / name).read_bytes(), name


def test_train_py_scores_the_average_as_it_scores_the_final_model(clm_run):
    """The mean of the last checkpoint alone is the final model (step 3): both evaluations give the same figures."""
    summary = read_summary(clm_run)
    assert summary["averaged_checkpoints"]["checkpoints"] == ["checkpoint-3"]
    assert summary["averaged_checkpoints"]["final_eval"] == summary["final_eval"]
    final, averaged = load_file(clm_run / "model.safetensors"), load_file(clm_run / "averaged" / "model.safetensors")
    assert final.keys() == averaged.keys() and all(torch.equal(averaged[n], t) for n, t in final.items())


@pytest.mark.parametrize(("extra", "message"), [
    (["--average_last_checkpoints", "2"], r"the run saves none: add --checkpointing_steps"),
    (["--average_last_checkpoints", "0", "--checkpointing_steps", "1"],
     r"--average_last_checkpoints must be at least 1, got 0"),
    (["--average_last_checkpoints", "3", "--checkpointing_steps", "1", "--checkpoints_total_limit", "2"],
     r"--checkpoints_total_limit 2 keeps only the newest 2; raise it to at least 3"),
    (["--average_last_checkpoints", "3", "--checkpointing_steps", "2", "--max_train_steps", "5",
      "--checkpoints_total_limit", "3"], r"5 steps with --checkpointing_steps 2 save only 2 checkpoints"),
    # An epoch-based run: its step count is known once the data is, still before training.
    (["--average_last_checkpoints", "2", "--checkpointing_steps", "1000", "--num_train_epochs", "1"],
     r"--average_last_checkpoints 2: \d+ steps with --checkpointing_steps 1000 save only 0 checkpoints"),
])
def test_train_py_refuses_an_average_it_could_not_make_before_training(tmp_path, isolated_train_runs, extra,
                                                                       message):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        train.main([*TINY_ARGS, *extra, "--output_dir", str(out)])
    assert not (out / "checkpoints").exists() and not (out / "model.safetensors").exists()


def test_train_py_skips_the_average_when_stopped_early_before_k_checkpoints(tmp_path, isolated_train_runs):
    out = tmp_path / "out"
    train.main([*TINY_ARGS, "--max_train_steps", "4", "--checkpointing_steps", "1", "--checkpoints_total_limit", "4",
                "--average_last_checkpoints", "4", "--max_train_seconds", "0.001", "--output_dir", str(out)])
    summary = read_summary(out)
    assert summary["stopped_early"] and summary["optimizer_steps"] == 1
    assert summary["averaged_checkpoints"]["skipped"].startswith("--last 4: ")
    assert not (out / "averaged").exists()


# --- the command line and sharded checkpoints (slow) ------------------------------------------------------------

@pytest.mark.slow
def test_the_command_line_prints_one_error_line_on_bad_input(clm_run, tmp_path):
    result = run_script(tmp_path, "average_checkpoints.py", str(clm_run), "--last", "9", "--output_dir",
                        str(tmp_path / "avg"), timeout=120, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --last 9: {str(clm_run / 'checkpoints')!r} holds only 3 (checkpoint-1, checkpoint-2, checkpoint-3); "
        "pass --last 3 or fewer, or train with more checkpoints kept (--checkpoints_total_limit).")
    assert not (tmp_path / "avg").exists()


FSDP_ON_CPU = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "configs" / "accelerate" / "fsdp_8gpu.yaml"), "--num_processes", "2", "--mixed_precision",
               "no", "--main_process_port", "0", str(ROOT / "tests" / "helpers" / "fsdp2_worker.py")]


@pytest.mark.slow
@pytest.mark.two_processes
def test_sharded_fsdp2_checkpoints_are_averaged_in_one_process(tmp_path):
    """A 2-process FSDP2 run (tests/helpers/fsdp2_worker.py) whose checkpoints are torch.distributed.checkpoint
    shards; train.py averages them at the end on every rank, and the command line does in one plain process."""
    run_dir = tmp_path / "fsdp"
    plan = [[*TINY_ARGS, "--max_train_steps", "4", "--checkpointing_steps", "2", "--per_device_train_batch_size",
             "4", "--num_warmup_steps", "1", "--average_last_checkpoints", "2", "--output_dir", str(run_dir)]]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    result = run_command([*FSDP_ON_CPU, str(tmp_path / "plan.json")], script_env(tmp_path, use_cpu=True), check=False)
    if result.returncode != 0:  # docs/distributed.md: a rare abort at a gloo run's shutdown; one rerun is allowed
        shutil.rmtree(run_dir, ignore_errors=True)
        run_command([*FSDP_ON_CPU, str(tmp_path / "plan.json")], script_env(tmp_path, use_cpu=True))
    shards = sorted(p.name for p in (checkpoint(run_dir, 4) / "pytorch_model_fsdp_0").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"] and not (checkpoint(run_dir, 4) / "model.safetensors").exists()

    # Read back whole: checkpoint-4 is the final (gathered) model, checkpoint-2 what torch's own converter reads.
    final, last = load_file(run_dir / "model.safetensors"), read_checkpoint_weights(checkpoint(run_dir, 4))
    assert all(torch.equal(last[name], tensor) for name, tensor in final.items())
    dcp_to_torch_save(checkpoint(run_dir, 2) / "pytorch_model_fsdp_0", tmp_path / "checkpoint-2.pt")
    converted = torch.load(tmp_path / "checkpoint-2.pt")["model"]
    first = read_checkpoint_weights(checkpoint(run_dir, 2))
    assert converted.keys() == first.keys() and all(torch.equal(first[n], t) for n, t in converted.items())

    folder = average_checkpoints.main([str(run_dir), "--last", "2", "--output_dir", str(tmp_path / "avg")])
    averaged = load_file(folder / "model.safetensors")
    assert averaged.keys() == final.keys()
    for name, tensor in averaged.items():
        assert torch.equal(tensor, ((first[name].double() + last[name].double()) / 2).float()), name
    assert (run_dir / "averaged" / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert (folder / "config.json").read_bytes() == (run_dir / "config.json").read_bytes()
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in averaged.items())
    summary = read_summary(run_dir)
    assert summary["num_processes"] == 2 and summary["averaged_checkpoints"]["checkpoints"] == [
        "checkpoint-2", "checkpoint-4"]
    assert summary["averaged_checkpoints"]["final_eval"]["loss"] != summary["final_eval"]["loss"]
