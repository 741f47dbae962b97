"""What every test file shares: tiny configs, tiny train.py runs, and the one way to run a fresh interpreter."""

import contextlib
import copy
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The import registers the Auto classes.
from hf_minitransformer import MiniTransformerConfig  # noqa: E402
from hf_minitransformer.data import train_bpe_tokenizer  # noqa: E402
from hf_minitransformer.manifest import describe_files  # noqa: E402
from hf_minitransformer.training.tasks import TASKS  # noqa: E402


ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


# --- tiny models ----------------------------------------------------------------------------------------------------

TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
)


def make_config(**overrides) -> MiniTransformerConfig:
    """hidden 32, 2 layers, 4 heads, vocab 99, dropout off, then `overrides`: each test runs in well under a second."""
    return MiniTransformerConfig(**{**TINY, **overrides})


def twin_reading_segment_1_as_0(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a model with two token types whose (source) token-type table has its rows swapped: given segment 0,
    or no token types, it computes what `model` computes for segment 1. Where the two agree, segment 1 reached every
    step that reads it."""
    twin = copy.deepcopy(model)
    stack = twin.get_encoder() if twin.config.is_encoder_decoder else twin.model
    with torch.no_grad():
        table = stack.embeddings.token_type_embeddings.weight
        table.copy_(table.flip(0))
    return twin


@pytest.fixture
def tiny_config() -> MiniTransformerConfig:
    return make_config()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fresh_compiler():
    # torch.compile keeps what it compiled per code object, and every head's forward is the one code object of
    # transformers' deprecate_kwarg wrapper: entries left by one test's (freed) models whose addresses a later
    # test's models reuse count toward that test's recompile limit (8), and a full-graph compile then fails.
    yield
    torch._dynamo.reset()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


# --- tiny train.py runs ---------------------------------------------------------------------------------------------

# The tiny preset narrowed to hidden 32, with a 300-token tokenizer trained on a 60 kB slice of the embedded corpus.
TINY_OVERRIDES = "hidden_size=32,intermediate_size=64,num_attention_heads=2,hidden_dropout_prob=0.0"
TINY_ARGS = ["--model_config", "tiny", "--config_overrides", TINY_OVERRIDES, "--vocab_size", "300",
             "--block_size", "32", "--max_corpus_bytes", "60000", "--report_to", "none"]


def load_script(name: str):
    """scripts/NAME.py imported as a module (the scripts are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_script", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reset_accelerate():
    """accelerate keeps its state in class attributes: a second in-process run needs it cleared."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def read_summary(output_dir: Path) -> dict:
    return json.loads((output_dir / "training_summary.json").read_text())


def train_straight_and_resumed(train, tmp_path: Path, args: list[str], step: int) -> tuple[Path, Path]:
    """scripts/train.py (the loaded `train`) run in this process with `args` straight through into tmp_path/straight,
    and again resumed from that run's checkpoint-STEP into tmp_path/resumed; both must end with bitwise-equal
    weights. Returns (straight, resumed)."""
    from safetensors.torch import load_file

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train.main([*args, "--output_dir", str(straight)])
    reset_accelerate()
    train.main([*args, "--resume_from_checkpoint", str(straight / "checkpoints" / f"checkpoint-{step}"),
                "--output_dir", str(resumed)])
    weights = [load_file(str(folder / "model.safetensors")) for folder in (straight, resumed)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    return straight, resumed


def read_log(output_dir: Path) -> list[dict]:
    """train_log.jsonl: a record per logging step (`loss`) and per evaluation (`eval_loss`)."""
    return [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines()]


@contextlib.contextmanager
def torch_on_one_thread():
    """torch on one thread inside the block, as before it after. On a small shared machine, OpenMP threads
    busy-waiting on each other slow tiny models 10-30x. Tests comparing bitwise with a subprocess of script_env (one
    thread) need it too: a product split over two threads sums in another order (seen with transformers 5.25: 1.2e-7
    apart)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    with torch_on_one_thread():
        yield


def use_private_datasets_cache(monkeypatch: pytest.MonkeyPatch, folder: Path):
    """`datasets` caches what it builds and maps under FOLDER, never in the user's cache."""
    import datasets.config

    monkeypatch.setenv("HF_DATASETS_CACHE", str(folder))  # for the processes started from here
    # `datasets` reads the variable once, when it is imported: this process takes the folder from its config.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", folder)


@pytest.fixture
def private_datasets_cache(tmp_path, monkeypatch):
    use_private_datasets_cache(monkeypatch, tmp_path / "datasets_cache")


@pytest.fixture
def isolated_train_runs(monkeypatch, private_datasets_cache, one_thread):
    """For in-process scripts/train.py runs: no Hub, a private datasets cache, one thread, and a fresh accelerate
    state afterwards."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield
    reset_accelerate()


# Two Python snippets: enough text to train a 300-token tokenizer in well under a second.
SNIPPETS = ["def add(a, b):\n    return a + b\n", "class Stack:\n    def push(self, item):\n        pass\n"] * 20


def training_output(folder: Path, task: str = "clm") -> Path:
    """A folder shaped like scripts/train.py's output (model, tokenizer, summary, log), built in seconds."""
    tokenizer = train_bpe_tokenizer(iter([SNIPPETS]), vocab_size=300, with_mask_token=task == "mlm")
    config = make_config(vocab_size=len(tokenizer), max_position_embeddings=32)
    model = TASKS[task].model_class(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    summary = {
        "task": task, "final_eval": {"loss": 5.0, "perplexity": 148.4}, "baselines": {"unigram_perplexity": 200.0},
        "optimizer_steps": 3, "tokens_seen": 96, "train_wall_seconds": 1.0, "num_processes": 1,
        "mixed_precision": "no", "data": {"source": "two snippets", "train_blocks": 3, "validation_blocks": 1,
                                          "block_size": 32},
        "args": {"learning_rate": 1e-3, "weight_decay": 0.1, "num_warmup_steps": 1, "lr_scheduler_type": "cosine",
                 "max_grad_norm": 1.0, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1},
    }
    if task == "seq2seq":
        summary["final_eval"].update(bleu=12.5, chrf=30.25, exact_match=0.125)
        summary["baselines"]["most_frequent_target"] = {"prediction": "Return x.", "bleu": 1.5, "chrf": 9.0,
                                                        "exact_match": 0.0}
        summary["generation"] = {"num_beams": 1, "max_new_tokens": 16, "samples": 8}
        summary["data"] = {"source": "two snippets", "train_pairs": 30, "validation_pairs": 8,
                           "validation_modules": 2}
    # As scripts/train.py records them: every file the final save wrote (here all there is so far).
    summary["files"] = describe_files(folder, [path.name for path in folder.iterdir() if path.is_file()])
    (folder / "training_summary.json").write_text(json.dumps(summary))
    log = [{"step": 1, "loss": 5.6}, {"step": 2, "loss": 5.3}, {"step": 2, "eval_loss": 5.2}, {"step": 3, "loss": 5.0}]
    (folder / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    return folder


def edit_summary(folder: Path, **changes):
    """Set fields of FOLDER/training_summary.json; a key `a__b` names summary["a"]["b"]."""
    summary = read_summary(folder)
    for key, value in changes.items():
        target = summary
        *parents, last = key.split("__")
        for parent in parents:
            target = target[parent]
        target[last] = value
    (folder / "training_summary.json").write_text(json.dumps(summary))


def readme_block(containing: str, language: str) -> str:
    """The README's ```LANGUAGE code block that contains `containing`; exactly one must."""
    blocks = re.findall(rf"```{language}\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)
    found = [block for block in blocks if containing in block]
    assert len(found) == 1, f"{len(found)} README {language} blocks contain {containing!r}"
    return found[0]


# --- fresh interpreters ---------------------------------------------------------------------------------------------

# `accelerate launch` of two CPU processes (gloo); the environment needs ACCELERATE_USE_CPU (`use_cpu=True` below),
# without which accelerate sees one process per worker.
TWO_CPU_PROCESSES = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                     "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                     "--main_process_port", "0"]


def script_env(tmp_path: Path, use_cpu: bool = False) -> dict[str, str]:
    """The environment of a script run in a subprocess: no Hub, a private datasets cache under `tmp_path`, one
    thread, and accelerate on the CPU only when asked (never inherited from the caller)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "datasets_cache"),
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    if use_cpu:
        env["ACCELERATE_USE_CPU"] = "true"
    return env


def kill_process_tree(pid: int) -> list[psutil.Process]:
    """SIGKILL `pid`, its process group and every process it started, with their groups, and wait for them to end;
    returns those still running after that (none, unless the OS refused). torchrun starts each worker in a session
    of its own: killing the launcher's group alone would leave the workers running, still writing to the run's
    folder, holding its lock, a core and the launcher's output pipes (a test reading them to their end would wait
    forever)."""
    try:
        processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for process in processes:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    # The launcher is the caller's child: it stays a zombie until the caller waits for it, which counts as ended.
    _, alive = psutil.wait_procs(processes[1:], timeout=30)
    return alive


def run_command(command: list[str], env: dict[str, str], cwd: Path | None = None, timeout: int = 300,
                check: bool = True) -> subprocess.CompletedProcess:
    """`command` in its own process group: on timeout it is killed with everything it started and the run counts as
    failed. With `check`, a failure fails the test with the end of its output."""
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_process_tree(process.pid)
        stdout, stderr = process.communicate()
        stderr += f"\n[test] killed after {timeout} s"
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def run_script(tmp_path: Path, script: str, *args: str, launcher: list[str] | None = None, use_cpu: bool = False,
               timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess:
    """scripts/SCRIPT (e.g. "train.py") with `args` in a fresh interpreter, or under `launcher` (TWO_CPU_PROCESSES)."""
    command = [*(launcher or [sys.executable]), str(SCRIPTS / script), *args]
    return run_command(command, script_env(tmp_path, use_cpu), timeout=timeout, check=check)


# A fresh interpreter in which `hf_minitransformer` cannot be imported, so only a saved folder's remote code
# (`trust_remote_code=True`) can provide the model. The package is installed in this venv, so it is hidden with
# `sys.modules[name] = None` (the import system then raises ModuleNotFoundError), and the prelude checks that it is.
_BLOCK_PACKAGE = """\
import sys
sys.modules["hf_minitransformer"] = None
try:
    import hf_minitransformer
except ImportError:
    pass
else:
    raise SystemExit("hf_minitransformer is still importable: the block failed")
"""


def run_python(code: str, workdir: Path, *args: str, block_package: bool = True,
               check: bool = True) -> subprocess.CompletedProcess:
    """Run `code` with `python -c` in `workdir` (not the repo, so no checkout on sys.path), `sys` imported.

    Remote-code modules are cached inside `workdir`, never in the user's HF cache; the Hub stays offline.
    """
    env = script_env(workdir)
    env.pop("PYTHONPATH", None)
    env["HF_MODULES_CACHE"] = str(workdir / "hf_modules")
    prelude = _BLOCK_PACKAGE if block_package else "import sys\n"
    return run_command([sys.executable, "-c", prelude + code, *args], env, cwd=workdir, check=check)
