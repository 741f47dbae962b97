"""Run scripts/train.py in this process, then write this rank's final weights to `<output_dir>/rank<R>.safetensors`.

Launched by tests/test_distributed.py through `accelerate launch`, so that the test can compare the ranks' weights
with each other and with a single-process run (save_pretrained writes the main process's copy only).
"""

import importlib.util
import os
import sys
from pathlib import Path

from safetensors.torch import save_file


SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train.py"


def main():
    spec = importlib.util.spec_from_file_location("train_script", SCRIPT)
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    argv = sys.argv[1:]
    model = train.main(argv)
    output_dir = Path(argv[argv.index("--output_dir") + 1])
    rank = int(os.environ.get("RANK", "0"))
    # clone: safetensors refuses tensors that share storage (the tied embedding and lm_head).
    weights = {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}
    save_file(weights, str(output_dir / f"rank{rank}.safetensors"))


if __name__ == "__main__":
    main()
