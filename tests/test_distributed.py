"""Distributed training on CPU with two real processes (gloo), as docs/distributed.md describes.

- DDP through `accelerate launch`: both ranks end with identical weights, equal to a one-process run with the same
  global batch.
- A two-process run killed with SIGKILL after a checkpoint and resumed ends bitwise equal to an uninterrupted run.
- The script refuses to run when accelerate sees fewer processes than the launcher started.
- FSDP2 through train.py's own code: configs/accelerate/fsdp_8gpu.yaml launched with 2 CPU processes, accelerate
  made to take its FSDP path on CPU (tests/helpers/fsdp2_worker.py says how and why). A causal LM run shards each
  MiniTransformerLayer, writes sharded checkpoints, resumes from one bitwise identically, logs the same finite
  gradient norm on both ranks, and gathers a `save_pretrained` folder equal to its shards and to a one-process run;
  a seq2seq run evaluates with generation while the ranks generate different lengths.
- A launch whose accelerate config asks for FSDP but runs without it says so.
The shipped accelerate config files are checked without launching anything.
"""

import json
import logging
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

import hf_minitransformer
from hf_minitransformer import modeling_minitransformer
from hf_minitransformer.training.arguments import parse_args
from hf_minitransformer.training.checkpointing import find_checkpoint

from .conftest import (
    ROOT,
    SCRIPTS,
    TINY_ARGS,
    TWO_CPU_PROCESSES,
    kill_process_tree,
    load_script,
    read_log,
    read_summary,
    run_command,
    script_env,
)


# Each test launches two training processes, which take both cores of a CI machine: run one at a time (.ci/run).
pytestmark = pytest.mark.two_processes

TRAIN = str(SCRIPTS / "train.py")
DUMP = str(ROOT / "tests" / "helpers" / "train_and_dump.py")
TINY_LOGGED = [*TINY_ARGS, "--logging_steps", "5"]
ONE_PROCESS = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no"]
CONFIGS = ROOT / "configs" / "accelerate"


def run(command: list[str], tmp_path: Path, use_cpu: bool = True) -> subprocess.CompletedProcess:
    """The launch on CPU processes unless `use_cpu` is off; a failure is returned, for `run_ok` to retry once."""
    return run_command(command, script_env(tmp_path, use_cpu), check=False)


def run_ok(command: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    result = run(command, tmp_path)
    if result.returncode != 0:
        # docs/distributed.md: a rare SIGABRT (or hang) at interpreter shutdown of a gloo run; one rerun is allowed.
        result = run(command, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


@pytest.mark.slow
def test_ddp_ranks_agree_and_match_one_process_with_the_same_global_batch(tmp_path):
    steps = ["--max_train_steps", "4", "--num_warmup_steps", "1", "--seed", "3"]
    single = tmp_path / "single"
    run_ok([*ONE_PROCESS, DUMP, *TINY_LOGGED, *steps, "--per_device_train_batch_size", "8",
            "--output_dir", str(single)], tmp_path)
    ddp = tmp_path / "ddp"
    # The same tokenizer for both runs, so that any difference comes from training.
    run_ok([*TWO_CPU_PROCESSES, DUMP, *TINY_LOGGED, *steps, "--per_device_train_batch_size", "4",
            "--tokenizer_name", str(single), "--output_dir", str(ddp)], tmp_path)

    rank0, rank1 = load_weights(ddp / "rank0.safetensors"), load_weights(ddp / "rank1.safetensors")
    reference = load_weights(single / "rank0.safetensors")
    for name, tensor in reference.items():
        assert torch.equal(rank0[name], rank1[name]), f"ranks disagree on {name}"
        torch.testing.assert_close(rank0[name], tensor, rtol=1e-4, atol=1e-5, msg=f"DDP != one process: {name}")
    summary = read_summary(ddp)
    assert summary["num_processes"] == 2
    assert summary["tokens_seen"] == 4 * 8 * 32
    assert summary["optimizer_steps"] == 4
    for name, tensor in load_weights(ddp / "model.safetensors").items():
        assert torch.equal(tensor, rank0[name]), f"save_pretrained wrote other weights for {name}"
    # The validation blocks do not split evenly over two processes: the samples accelerate repeats must not count.
    assert summary["final_eval"]["loss"] == pytest.approx(read_summary(single)["final_eval"]["loss"], rel=1e-5)
    # Each rank destroyed its process group once, with no DDP wrapper left to destroy it again under the interpreter
    # lock (which hung one run in 30: docs/distributed.md).
    assert [json.loads((ddp / f"teardown{rank}.json").read_text()) for rank in range(2)] == [[0], [0]]


@pytest.mark.slow
def test_sigkilled_two_process_run_resumes_bitwise_identically(tmp_path):
    # Enough steps to cross an epoch boundary (about 90 steps per epoch here) after the kill.
    args = [*TINY_LOGGED, "--max_train_steps", "120", "--checkpointing_steps", "10", "--checkpoints_total_limit", "2",
            "--per_device_train_batch_size", "4", "--eval_steps", "50", "--num_warmup_steps", "5"]
    straight = tmp_path / "straight"
    run_ok([*TWO_CPU_PROCESSES, TRAIN, *args, "--output_dir", str(straight)], tmp_path)

    killed = tmp_path / "killed"
    command = [*TWO_CPU_PROCESSES, TRAIN, *args, "--tokenizer_name", str(straight), "--output_dir", str(killed)]
    process = subprocess.Popen(command, env=script_env(tmp_path, use_cpu=True), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while not (killed / "checkpoints" / "checkpoint-20").is_dir():
        assert process.poll() is None, "the run ended before its second checkpoint"
        assert time.time() < deadline, "no checkpoint-20 within 240 s"
        time.sleep(0.02)
    # Launcher and both workers (torchrun gives each worker a session of its own), mid-run, no chance to clean up.
    assert kill_process_tree(process.pid) == []
    process.wait()
    assert not (killed / "model.safetensors").exists(), "the run finished before it was killed"

    run_ok([*TWO_CPU_PROCESSES, TRAIN, *args, "--tokenizer_name", str(straight), "--output_dir", str(killed),
            "--resume_from_checkpoint", "latest"], tmp_path)
    expected, resumed = load_weights(straight / "model.safetensors"), load_weights(killed / "model.safetensors")
    for name, tensor in expected.items():
        assert torch.equal(resumed[name], tensor), f"{name} differs after resume"
    summaries = [read_summary(d) for d in (straight, killed)]
    assert summaries[0]["final_eval"] == summaries[1]["final_eval"]
    assert summaries[0]["tokens_seen"] == summaries[1]["tokens_seen"] == 120 * 8 * 32
    # Only the last two checkpoints are kept, and no half-written one is left behind.
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["checkpoint-110", "checkpoint-120"]
    # The log of the resumed run has each step once: lines past the checkpoint were dropped on resume.
    steps = [record["step"] for record in read_log(killed) if "loss" in record]
    assert steps == list(range(5, 121, 5))


@pytest.mark.slow
def test_refuses_to_run_when_accelerate_sees_fewer_processes_than_launched(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = run([*torchrun, TRAIN, *TINY_LOGGED, "--output_dir", str(tmp_path / "out")], tmp_path, use_cpu=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    # One line from the first worker; no worker's traceback (the launcher's own report of the exit codes stays).
    assert output.count("error: The launcher started 2 processes but accelerate sees 1") == 1, output[-3000:]
    assert "[rank0]: Traceback" not in output and "[rank1]: Traceback" not in output
    assert not (tmp_path / "out" / "model.safetensors").exists()


# --- FSDP2 through train.py ------------------------------------------------------------------------------------

FSDP_ON_CPU = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "fsdp_8gpu.yaml"),
               "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", "0",
               str(ROOT / "tests" / "helpers" / "fsdp2_worker.py")]
FSDP_CLM = [*TINY_ARGS, "--max_train_steps", "4", "--checkpointing_steps", "2", "--logging_steps", "1",
            "--eval_steps", "2", "--per_device_train_batch_size", "4", "--num_warmup_steps", "1"]
# Four pairs learnt by heart, so that generation gives back each target, and the targets differ in length: with one
# pair per process and batch, the two ranks generate different numbers of tokens.
PAIRS = {"def add(a, b):\n    return a + b\n": "Return the sum of a and b.",
         "def neg(x):\n    return -x\n": "Negate x.",
         "def first(items):\n    return items[0]\n": "Return the first item.",
         "def is_empty(s):\n    return not s\n": "Whether s is empty."}


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory) -> Path:
    """One 2-process FSDP2 launch of three train.main runs: causal LM, the same resumed from its checkpoint-2 in
    another folder, and a seq2seq run that overfits PAIRS."""
    root = tmp_path_factory.mktemp("fsdp")
    from datasets import Dataset

    pairs = root / "pairs.jsonl"
    Dataset.from_dict({"source": list(PAIRS), "target": list(PAIRS.values())}).to_json(pairs)
    seq2seq = [*TINY_ARGS, "--task", "seq2seq", "--train_file", str(pairs), "--validation_file", str(pairs),
               "--max_train_steps", "100", "--learning_rate", "1e-2", "--num_warmup_steps", "5", "--logging_steps",
               "50", "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "2",
               "--per_device_eval_batch_size", "1"]
    plan = [[*FSDP_CLM, "--output_dir", str(root / "clm")],
            # No --tokenizer_name: a resume repeats its run's arguments, and takes the checkpoint's tokenizer.
            [*FSDP_CLM, "--output_dir", str(root / "resumed"),
             "--resume_from_checkpoint", str(root / "clm" / "checkpoints" / "checkpoint-2")],
            [*seq2seq, "--output_dir", str(root / "seq2seq")]]
    (root / "plan.json").write_text(json.dumps(plan))
    run_ok([*FSDP_ON_CPU, str(root / "plan.json")], root)
    return root


def rank_views(run: Path) -> list[dict]:
    return [json.loads((run / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def gathered_from_shards(run: Path) -> dict[str, torch.Tensor]:
    """Each parameter as the two ranks held it at the end: sharded ones (on dim 0) put back together."""
    sharded = set(rank_views(run)[0]["sharded"])
    rank0, rank1 = load_weights(run / "rank0.safetensors"), load_weights(run / "rank1.safetensors")
    return {name: torch.cat([rank0[name], rank1[name]]) if name in sharded else rank0[name] for name in rank0}


@pytest.mark.slow
def test_fsdp2_through_train_py_shards_each_layer_and_writes_sharded_checkpoints(fsdp_runs):
    for run, model_class, layers in (("clm", "FSDPMiniTransformerForCausalLM", ["model.layers."]),
                                     ("seq2seq", "FSDPMiniTransformerForSeq2SeqLM",
                                      ["model.encoder.layers.", "model.decoder.layers."])):
        views = rank_views(fsdp_runs / run)
        for view in views:
            assert view["distributed_type"] == "DistributedType.FSDP" and view["is_fsdp2"]
            assert view["num_processes"] == 2 and view["model_class"] == model_class
        rank0 = load_weights(fsdp_runs / run / "rank0.safetensors")
        in_layers = [name for name in rank0 if name.startswith(tuple(layers))]
        for stack in layers:
            indices = {name.removeprefix(stack).split(".")[0] for name in in_layers if name.startswith(stack)}
            assert indices == {"0", "1"}
        assert set(in_layers) <= set(views[0]["sharded"]), "a layer parameter is not sharded"
        full = load_weights(fsdp_runs / run / "model.safetensors")
        assert all(rank0[name].shape[0] == full[name].shape[0] // 2 for name in in_layers)  # half on each rank
    checkpoint = fsdp_runs / "clm" / "checkpoints" / "checkpoint-2"
    # accelerate's save_state under FSDP: torch.distributed.checkpoint, one file per rank, for model and optimizer.
    for folder in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert sorted(p.name for p in (checkpoint / folder).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not [p.name for p in checkpoint.iterdir() if p.name.startswith(("model", "pytorch_model.", "optimizer."))]
    assert find_checkpoint("latest", str(fsdp_runs / "clm")).name == "checkpoint-4"  # manifests verify


@pytest.mark.slow
def test_fsdp2_resume_from_a_sharded_checkpoint_is_bitwise_identical(fsdp_runs):
    straight, resumed = fsdp_runs / "clm", fsdp_runs / "resumed"
    expected, weights = load_weights(straight / "model.safetensors"), load_weights(resumed / "model.safetensors")
    assert expected.keys() == weights.keys()
    for name, tensor in expected.items():
        assert torch.equal(weights[name], tensor), f"{name} differs after resume"
    summaries = [read_summary(d) for d in (straight, resumed)]
    assert summaries[0]["final_eval"] == summaries[1]["final_eval"]
    assert summaries[0]["tokens_seen"] == summaries[1]["tokens_seen"] == 4 * 8 * 32
    # The resumed run logs steps 3 and 4 as the straight run did: loss, gradient norm, learning rate (not the speed).
    logged = [[{k: v for k, v in metrics.items() if k != "tokens_per_s"} for metrics in rank_views(run)[0]["logged"]]
              for run in (straight, resumed)]
    assert logged[1] == logged[0][2:] and len(logged[1]) == 2


@pytest.mark.slow
def test_fsdp2_grad_norm_is_a_finite_float_equal_on_both_ranks(fsdp_runs):
    for run in ("clm", "seq2seq"):
        norms = [[metrics["grad_norm"] for metrics in view["logged"]] for view in rank_views(fsdp_runs / run)]
        assert norms[0] == norms[1] and len(norms[0]) == (4 if run == "clm" else 2)
        assert all(isinstance(norm, float) and math.isfinite(norm) and norm > 0 for norm in norms[0])
    assert [r["grad_norm"] for r in read_log(fsdp_runs / "clm") if "grad_norm" in r] == norms_of(fsdp_runs / "clm")


def norms_of(run: Path) -> list[float]:
    return [metrics["grad_norm"] for metrics in rank_views(run)[0]["logged"]]


@pytest.mark.slow
@pytest.mark.parametrize(("run", "auto_class"), [("clm", AutoModelForCausalLM), ("seq2seq", AutoModelForSeq2SeqLM)])
def test_fsdp2_gathered_save_pretrained_equals_the_shards_and_loads(fsdp_runs, run, auto_class):
    folder = fsdp_runs / run
    saved, shards = load_weights(folder / "model.safetensors"), gathered_from_shards(folder)
    # Every parameter once, tied ones (lm_head, the seq2seq decoder's embeddings) left out as without FSDP.
    assert saved.keys() == shards.keys()
    for name, tensor in saved.items():
        assert torch.equal(tensor, shards[name]), f"saved {name} differs from the shards"
    # The folder is the model's, not FSDP's: FSDP2 renames the class (FSDPMiniTransformer...) and defines it in a
    # torch module, which save_pretrained would otherwise name in auto_map and copy as the model's code.
    config = json.loads((folder / "config.json").read_text())
    assert all(value.startswith("modeling_minitransformer.") for key, value in config["auto_map"].items()
               if key != "AutoConfig")
    assert config["architectures"] == [rank_views(folder)[0]["model_class"].removeprefix("FSDP")]
    assert (folder / "modeling_minitransformer.py").is_file() and not list(folder.glob("_fsdp*.py"))
    model = auto_class.from_pretrained(folder)
    state = model.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in shards.items())


@pytest.mark.slow
def test_fsdp2_trains_like_one_unsharded_process_on_the_same_global_batch(fsdp_runs, tmp_path, isolated_train_runs):
    train = load_script("train")
    reference = tmp_path / "reference"
    train.main([*FSDP_CLM, "--per_device_train_batch_size", "8", "--tokenizer_name", str(fsdp_runs / "clm"),
                "--output_dir", str(reference)])
    expected = load_weights(reference / "model.safetensors")
    for name, tensor in load_weights(fsdp_runs / "clm" / "model.safetensors").items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-4, atol=1e-5, msg=f"FSDP != one process: {name}")
    expected_norms = [record["grad_norm"] for record in read_log(reference) if "grad_norm" in record]
    assert norms_of(fsdp_runs / "clm") == pytest.approx(expected_norms, rel=1e-4)
    # The same evaluation, although two processes even out the last validation batch with repeated samples.
    assert read_summary(fsdp_runs / "clm")["final_eval"]["loss"] == pytest.approx(
        read_summary(reference)["final_eval"]["loss"], rel=1e-5)


@pytest.mark.slow
def test_fsdp2_seq2seq_evaluation_generates_while_ranks_finish_at_different_lengths(fsdp_runs):
    """transformers' `generate` keeps a finished rank stepping (synced_gpus) when the model is FSDP-managed; without
    that, the rank that ends first would leave the other one waiting in a layer's all-gather."""
    summary = read_summary(fsdp_runs / "seq2seq")
    tokenizer = AutoTokenizer.from_pretrained(fsdp_runs / "seq2seq")
    lengths = [len(tokenizer(target)["input_ids"]) for target in PAIRS.values()]
    assert lengths[0] != lengths[1] and lengths[2] != lengths[3]  # one pair per rank and batch: rank 0 gets 0 and 2
    assert summary["generation"]["samples"] == 4
    assert [(e["reference"], e["prediction"]) for e in summary["generation"]["examples"]] == [
        (target, target) for target in PAIRS.values()]
    assert summary["final_eval"]["exact_match"] == 1.0 and summary["final_eval"]["loss"] < 0.1
    assert summary["num_parameters"] == hf_minitransformer.MiniTransformerForSeq2SeqLM(
        AutoConfig.from_pretrained(fsdp_runs / "seq2seq")).num_parameters()


def test_warns_when_the_accelerate_config_asks_for_fsdp_but_the_run_is_not_fsdp(tmp_path, monkeypatch, caplog,
                                                                                  isolated_train_runs):
    """What `accelerate launch --config_file configs/accelerate/fsdp_8gpu.yaml` sets, in a process that accelerate
    does not run under FSDP (here: one CPU process)."""
    train = load_script("train")
    args = parse_args([*TINY_ARGS, "--output_dir", str(tmp_path / "out")])
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with caplog.at_level(logging.WARNING):
        accelerator = train.build_accelerator(args.optimization, args.output)
    assert accelerator.distributed_type == DistributedType.NO
    warnings = [record.getMessage() for record in caplog.records if "asks for FSDP" in record.getMessage()]
    assert warnings == ["[RANK 0] The accelerate config asks for FSDP (ACCELERATE_USE_FSDP=true), but this run is "
                        "DistributedType.NO: accelerate enables FSDP only for processes launched on GPUs (or other "
                        "accelerators) by `accelerate launch`; it trains as one process holding the whole model."]


def test_no_warning_when_the_config_asks_for_no_fsdp(tmp_path, monkeypatch, caplog, isolated_train_runs):
    train = load_script("train")
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    with caplog.at_level(logging.WARNING):
        args = parse_args([*TINY_ARGS, "--output_dir", str(tmp_path / "out")])
        train.build_accelerator(args.optimization, args.output)
    assert not [record for record in caplog.records if "asks for" in record.getMessage()]


@pytest.mark.parametrize(("name", "processes", "machines"),
                         [("single_gpu", 1, 1), ("ddp_8gpu", 8, 1), ("fsdp_8gpu", 8, 1), ("multinode_2x8", 16, 2)])
def test_accelerate_config_files_load(name, processes, machines):
    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert (config.num_processes, config.num_machines) == (processes, machines)
    assert not config.use_cpu


def test_fsdp_config_wraps_the_layer_class_and_gathers_for_save_pretrained():
    fsdp = yaml.safe_load((CONFIGS / "fsdp_8gpu.yaml").read_text())["fsdp_config"]
    assert fsdp["fsdp_version"] == 2
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    layer_class = getattr(modeling_minitransformer, fsdp["fsdp_transformer_layer_cls_to_wrap"])
    assert layer_class.__name__ in modeling_minitransformer.MiniTransformerPreTrainedModel._no_split_modules
    # From the config file, accelerate builds an FSDP2 plugin that wraps exactly that class.
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy=fsdp["fsdp_auto_wrap_policy"],
        transformer_cls_names_to_wrap=fsdp["fsdp_transformer_layer_cls_to_wrap"],
        state_dict_type=fsdp["fsdp_state_dict_type"],
    )
    assert plugin.transformer_cls_names_to_wrap == ["MiniTransformerLayer"]
