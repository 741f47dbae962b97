"""Run scripts/train.py in this process, then write this rank's final weights to `<output_dir>/rank<R>.safetensors`.

Launched by tests/test_distributed.py through `accelerate launch`, so that the test can compare the ranks' weights
with each other and with a single-process run (save_pretrained writes the main process's copy only).
"""

import os
import sys
from pathlib import Path

from safetensors.torch import save_file


# A launched script: the tests' package is importable only from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.conftest import load_script  # noqa: E402


def main():
    train = load_script("train")
    argv = sys.argv[1:]
    model = train.main(argv)
    output_dir = Path(argv[argv.index("--output_dir") + 1])
    rank = int(os.environ.get("RANK", "0"))
    # clone: safetensors refuses tensors that share storage (the tied embedding and lm_head).
    weights = {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}
    save_file(weights, str(output_dir / f"rank{rank}.safetensors"))


if __name__ == "__main__":
    main()
