import os

import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from hf_minitransformer import MiniTransformerConfig  # noqa: E402  (the import registers the Auto classes)


TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_config() -> MiniTransformerConfig:
    """hidden 32, 2 layers, 4 heads, vocab 99, dropout off: every test runs in well under a second."""
    return MiniTransformerConfig(**TINY)


@pytest.fixture
def isolated_train_runs(tmp_path, monkeypatch):
    """For in-process scripts/train.py runs: no Hub, a private datasets cache, one thread, and a fresh accelerate
    state afterwards (accelerate keeps its state in class attributes)."""
    from accelerate.state import AcceleratorState, GradientState

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets_cache"))
    # One thread: on a small shared machine, several busy-waiting threads per process slow tiny models 10x.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def make_config(**overrides) -> MiniTransformerConfig:
    return MiniTransformerConfig(**{**TINY, **overrides})


def load_script(name: str):
    """scripts/NAME.py imported as a module (the scripts are not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


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


def run_python(code: str, workdir, *args: str, block_package: bool = True):
    """Run `code` with `python -c` in `workdir` (not the repo, so no checkout on sys.path); returns CompletedProcess.

    Remote-code modules are cached inside `workdir`, never in the user's HF cache; the Hub stays offline.
    """
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(workdir / "hf_modules"), TOKENIZERS_PARALLELISM="false")
    env["OMP_NUM_THREADS"] = "1"  # tiny models; a second thread only waits on busy CPUs
    source = (_BLOCK_PACKAGE if block_package else "") + code
    return subprocess.run(
        [sys.executable, "-c", source, *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )
