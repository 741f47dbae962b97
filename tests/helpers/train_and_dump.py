"""Run scripts/train.py in this process, then write this rank's final weights to `<output_dir>/rank<R>.safetensors`,
and how many DDP wrappers were alive when the process group was destroyed to `<output_dir>/teardown<R>.json`.

Launched by tests/test_distributed.py through `accelerate launch`, so that the test can compare the ranks' weights
with each other and with a single-process run (save_pretrained writes the main process's copy only). A DDP wrapper
alive at that moment would destroy the group itself later, which can hang the process (docs/distributed.md).
"""

import gc
import json
import os
import sys
from pathlib import Path

import torch.distributed
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel


# A launched script: the tests' package is importable only from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.conftest import load_script  # noqa: E402


def record_ddp_wrappers_at_teardown(teardowns: list[int]):
    """Appends to `teardowns`, at each destroy_process_group, the DDP wrappers still alive."""
    destroy = torch.distributed.destroy_process_group

    def recording_destroy(*args, **kwargs):
        gc.collect()
        teardowns.append(sum(isinstance(thing, DistributedDataParallel) for thing in gc.get_objects()))
        return destroy(*args, **kwargs)

    torch.distributed.destroy_process_group = recording_destroy


def main():
    train = load_script("train")
    argv = sys.argv[1:]
    teardowns = []
    record_ddp_wrappers_at_teardown(teardowns)
    model = train.main(argv)
    output_dir = Path(argv[argv.index("--output_dir") + 1])
    rank = int(os.environ.get("RANK", "0"))
    (output_dir / f"teardown{rank}.json").write_text(json.dumps(teardowns))
    # clone: safetensors refuses tensors that share storage (the tied embedding and lm_head).
    weights = {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}
    save_file(weights, str(output_dir / f"rank{rank}.safetensors"))


if __name__ == "__main__":
    main()
