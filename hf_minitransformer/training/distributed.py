"""What changes when the model is sharded (FSDP2) or the launch is not what its config asked for.

accelerate does the sharding, the sharded checkpoints and the gathering; these are the few steps our models need
around it. tests/test_distributed.py runs them on CPU through accelerate's own FSDP2 path.
"""

import gc
import os

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType
from torch.distributed.fsdp import FSDPModule


logger = get_logger(__name__)


def warn_if_not_as_configured(accelerator: Accelerator):
    """One warning when the accelerate config asks for FSDP or DeepSpeed and the run ends up without it."""
    # `accelerate launch --config_file` passes the config on as these variables; accelerate then turns FSDP and
    # DeepSpeed on only for processes it runs on GPUs (or other accelerators), and silently trains without them
    # otherwise: on CPU (ACCELERATE_USE_CPU), or a plain `python scripts/train.py` with the variable set.
    for variable, asked in (("ACCELERATE_USE_FSDP", DistributedType.FSDP),
                            ("ACCELERATE_USE_DEEPSPEED", DistributedType.DEEPSPEED)):
        if os.environ.get(variable, "false").lower() != "true" or accelerator.distributed_type == asked:
            continue
        runs_as = ("plain data parallel (DDP): every process holds the whole model, its gradients and optimizer state"
                   if accelerator.num_processes > 1 else "one process holding the whole model")
        logger.warning(f"The accelerate config asks for {asked.value} ({variable}=true), but this run is "
                       f"{accelerator.distributed_type}: accelerate enables {asked.value} only for processes "
                       f"launched on GPUs (or other accelerators) by `accelerate launch`; it trains as {runs_as}.")


def share_tied_embedding_module(model: torch.nn.Module):
    """Under FSDP2, make the tied source and target embeddings one module, as they are one matrix.

    FSDP2 refuses a parameter that two of its groups manage. accelerate puts the input and output embeddings
    (tied) in one group, but an encoder-decoder holds the same matrix in a third module, the decoder's token
    embeddings, which would fall to the root group. `set_input_embeddings` gives the decoder the encoder's module
    itself when the embeddings are tied (a no-op for one stack, or untied ones): the weights, the state dict's keys
    and the computation stay the same.
    """
    model.set_input_embeddings(model.get_input_embeddings())


def unsharded_twin(model: FSDPModule) -> torch.nn.Module:
    """The FSDP2 `model` as `save_pretrained` must see it: a twin of its own class, on the meta device.

    FSDP2 turns the model into an instance of a class it generates, FSDP<Name>(FSDPModule, <Name>), defined in a
    torch module: `save_pretrained` would write that module into `auto_map` and copy torch's files as the model's
    code, so the folder would not load with trust_remote_code. The twin shares the config and generation config,
    holds no memory, and is saved with the gathered state dict.
    """
    with torch.device("meta"):
        twin = unsharded_class(model)(model.config)
    twin.generation_config = model.generation_config
    return twin


def unsharded_class(model: torch.nn.Module) -> type[torch.nn.Module]:
    """The model's own class: under FSDP2, the class FSDP<Name> was generated from; otherwise the model's class."""
    return next(cls for cls in type(model).__mro__ if not issubclass(cls, FSDPModule))


def end_training(accelerator: Accelerator):
    """accelerate's end_training (trackers finished, process group destroyed), once the DDP wrapper is gone.

    The wrapper's C++ reducer holds the gloo process group. Had it let go last (as the caller's frame ends), it would
    destroy the group with the interpreter lock held, and the group waits for its worker threads, one of which may
    still need that lock to free the tensors of the last collective: the process hangs for good (one two-process run
    in about 30 here; py-spy: ~ProcessGroupGloo in std::thread::join under ~Reducer, the worker thread in
    gil_scoped_acquire). Freed first, the reducer only drops its reference; destroy_process_group then drops the
    group through torch's Python binding, which releases the lock before the destructor runs. The caller must hold
    no reference to the wrapper (keep `accelerator.unwrap_model(model)`).
    """
    accelerator.free_memory()  # accelerate's references to the prepared model, optimizer, scheduler and loaders
    gc.collect()  # the wrapper, were it in a reference cycle
    accelerator.end_training()
