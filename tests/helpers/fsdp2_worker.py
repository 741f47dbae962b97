"""Run scripts/train.py's own `main` under accelerate's FSDP2 on CPU, run after run, and record each rank's view.

    ACCELERATE_USE_CPU=true accelerate launch --config_file configs/accelerate/fsdp_8gpu.yaml --num_processes 2 \
        --mixed_precision no --main_process_port 0 tests/helpers/fsdp2_worker.py PLAN.json

PLAN.json is a list of argument lists, each one `train.main(argv)`. After each run, every rank writes into the run's
--output_dir `rank<R>.safetensors` (its local shard of each parameter, or the whole tensor where the parameter is
not sharded at the end) and `rank<R>.json` (the distributed type, the sharded parameters' names, and the metrics
`TrainingMetrics.log` returned on this rank: only the main process writes them to the log file). The test
reassembles the shards and compares them with what the run saved.
"""

import json
import sys
from pathlib import Path

import torch.distributed as dist
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import DistributedType
from safetensors.torch import save_file
from torch.distributed.tensor import DTensor

from hf_minitransformer.training.tracking import TrainingMetrics


# A launched script: the tests' package is importable only from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.conftest import load_script  # noqa: E402


def let_accelerate_run_fsdp_on_cpu():
    """The one change to the production path, made here only: accelerate takes its FSDP path on CPU.

    `accelerate launch --config_file configs/accelerate/fsdp_8gpu.yaml` hands the config to each worker as
    ACCELERATE_USE_FSDP and FSDP_* variables, from which `Accelerator` builds its FullyShardedDataParallelPlugin. But
    `AcceleratorState` switches to DistributedType.FSDP only for GPU-like distributed types (accelerate/state.py,
    `AcceleratorState.__init__`): with ACCELERATE_USE_CPU it stays MULTI_CPU and the run is plain DDP. FSDP2 itself
    (fully_shard, DTensor, torch.distributed.checkpoint) works on CPU with gloo, so once the state is built this makes
    the switch accelerate makes on GPUs, and the rest runs unchanged: accelerate's FSDP2 `prepare`, clip_grad_norm_
    on DTensors, sharded save_state/load_state, the gathering get_state_dict.
    """
    original_init = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = init


def keep_one_process_group_for_all_runs():
    """`end_training` destroys the process group, and the next run's `Accelerator` would create a new one. In the
    same processes that can hang: the launcher's store still holds the first group's rendezvous keys. So the runs
    share the first group (as accelerate does for processes its notebook launcher forks), closed at the end."""
    PartialState.destroy_process_group = lambda self, group=None: None


def record_logged_metrics() -> list[dict]:
    """Collects what `TrainingMetrics.log` returns on this rank (it still logs as before)."""
    logged = []
    original_log = TrainingMetrics.log

    def log(self, *args, **kwargs):
        logged.append(original_log(self, *args, **kwargs))
        return logged[-1]

    TrainingMetrics.log = log
    return logged


def record_accelerators(train) -> list:
    built = []
    original_build = train.build_accelerator

    def build_accelerator(optimization, output):
        built.append(original_build(optimization, output))
        return built[-1]

    train.build_accelerator = build_accelerator
    return built


def write_rank_view(model, accelerator, logged: list[dict], output_dir: Path):
    rank = accelerator.process_index
    tensors, sharded = {}, []
    for name, param in model.named_parameters():
        if isinstance(param, DTensor):
            sharded.append(name)
            param = param.to_local()  # this rank's shard, as it holds it
        tensors[name] = param.detach().clone().contiguous()
    save_file(tensors, str(output_dir / f"rank{rank}.safetensors"))
    view = {"distributed_type": str(accelerator.distributed_type), "is_fsdp2": accelerator.is_fsdp2,
            "num_processes": accelerator.num_processes, "model_class": type(model).__name__, "sharded": sharded,
            "logged": logged}
    (output_dir / f"rank{rank}.json").write_text(json.dumps(view))


def main():
    let_accelerate_run_fsdp_on_cpu()
    keep_one_process_group_for_all_runs()
    logged = record_logged_metrics()
    train = load_script("train")
    accelerators = record_accelerators(train)
    for index, argv in enumerate(json.loads(Path(sys.argv[1]).read_text())):
        if index:  # accelerate keeps its state in class attributes
            AcceleratorState._reset_state(True)
            GradientState._reset_state()
        logged.clear()
        model = train.main(argv)
        write_rank_view(model, accelerators[-1], logged, Path(argv[argv.index("--output_dir") + 1]))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
