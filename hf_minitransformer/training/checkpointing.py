"""Resumable checkpoints and the final model save.

A checkpoint is accelerate's `save_state` (model, optimizer, scheduler, sampler, every rank's RNG states; sharded
under FSDP) plus the tokenizer, the model's config and generation config, a `TrainState` and the run's arguments,
written under a temporary name and renamed when complete, with a manifest (size and sha256 of every file) written
last: a resume verifies each file against it. `read_checkpoint_weights` reads a checkpoint's model weights back as one
full state dict in a single process, sharded or not. The final save gathers the full state dict (under FSDP every rank
takes part) and writes a `save_pretrained` folder.
"""

import copy
import dataclasses
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import safetensors.torch
import torch
import torch.distributed.checkpoint as dcp
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils.constants import FSDP_MODEL_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_NAME
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.fsdp import FSDPModule
from transformers import GenerationConfig, PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..atomic_files import write_text_atomically
from ..manifest import describe_files, files_problem
from .distributed import unsharded_class, unsharded_twin
from .tracking import warn


logger = get_logger(__name__)

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.json"
MANIFEST = "manifest.json"  # every file of a checkpoint with its size and sha256, written last
RUN_ARGS = "run_args.json"  # the arguments of the run that saved it, which a resume must repeat
# With --streaming, each process's place in its share of the stream, one file per process (see streaming.py).
DATA_STATE = "data_state_{process}.pt"
CONFIG = "config.json"  # the model's config, as the final save writes it (without auto_map: no code is copied)
GENERATION_CONFIG = "generation_config.json"  # the generation config the final save writes
# Where accelerate's `save_state` puts the model weights: safetensors (the default) or torch.save without FSDP; under
# FSDP a full state dict (FULL_STATE_DICT) or one torch.distributed.checkpoint folder (SHARDED_STATE_DICT).
UNSHARDED_WEIGHTS = (SAFE_WEIGHTS_NAME, WEIGHTS_NAME, f"{FSDP_MODEL_NAME}.bin")
SHARDED_WEIGHTS = f"{FSDP_MODEL_NAME}_0"


@dataclasses.dataclass
class TrainState:
    """Where training stands; saved beside each accelerate checkpoint, so a resumed run continues exactly."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of `epoch` already consumed, per process
    tokens_seen: int = 0  # over all processes (padding of the last uneven batch included)
    train_seconds: float = 0.0  # wall time spent training, summed over resumes


def save_checkpoint(accelerator: Accelerator, model: torch.nn.Module, output_dir: str, state: TrainState,
                    tokenizer: PreTrainedTokenizerBase, total_limit: int, run_args: dict,
                    data_state: dict | None = None, generation: dict | None = None):
    """`save_state` into a temporary folder renamed when complete: a checkpoint-N folder is never half-written, and
    its manifest lets a resume detect a file damaged since. Only the newest `total_limit` checkpoints are kept.
    `data_state`, this process's own (a stream's loader state), is written by each process to a file of its own.

    The model's config and generation config (as `save_model` would write them) make the checkpoint say what its
    weights are, so that it can be averaged or exported without the run's final folder."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    final, partial = root / f"checkpoint-{state.step}", root / f"tmp-checkpoint-{state.step}"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)  # left by a run killed while saving
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))  # model, optimizer, scheduler, sampler, every rank's RNG states
    if data_state is not None:
        torch.save(data_state, partial / DATA_STATE.format(process=accelerator.process_index))
    if accelerator.is_main_process:
        tokenizer.save_pretrained(partial)
        write_model_description(accelerator.unwrap_model(model), tokenizer, generation or {}, partial)
        (partial / TRAINER_STATE).write_text(json.dumps(dataclasses.asdict(state), indent=2))
        (partial / RUN_ARGS).write_text(json.dumps(run_args, indent=2))
    accelerator.wait_for_everyone()  # save_state has no barrier of its own: all ranks must have written
    if accelerator.is_main_process:
        write_manifest(partial)  # last: resuming verifies every file against it
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        for old in numbered_checkpoints(root)[:-total_limit]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def write_model_description(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, generation: dict,
                            folder: Path):
    """config.json (naming the model's class, as `save_pretrained` does) and generation_config.json into `folder`."""
    config = copy.deepcopy(model.config)  # the model keeps its own: the final save sets what it needs on it
    config.architectures = [unsharded_class(model).__name__]
    config.to_json_file(folder / CONFIG, use_diff=True)
    if model.can_generate():
        generation_config = copy.deepcopy(model.generation_config)
        set_generation_defaults(generation_config, model.config, tokenizer, generation)
        generation_config.save_pretrained(folder)


def set_generation_defaults(generation_config: GenerationConfig, config: PreTrainedConfig,
                            tokenizer: PreTrainedTokenizerBase, generation: dict):
    """The tokenizer's special tokens; for an encoder-decoder also its decoder start and `generation`, how its
    evaluation decodes (beams, length penalty, and `max_new_tokens`, without which `generate` stops at 20 tokens,
    shorter than the targets it was trained on)."""
    generation_config.pad_token_id = tokenizer.pad_token_id
    generation_config.bos_token_id = tokenizer.bos_token_id
    generation_config.eos_token_id = tokenizer.eos_token_id
    if config.is_encoder_decoder:
        generation_config.decoder_start_token_id = config.decoder_start_token_id
        generation_config.update(**generation)


def load_checkpoint(accelerator: Accelerator, path: Path, batches_per_epoch: int | None) -> TrainState:
    """Restore everything `save_checkpoint` saved but the data state; returns where training stands (a stream has
    no epochs: `batches_per_epoch` None)."""
    accelerator.load_state(str(path))
    state = TrainState(**json.loads((path / TRAINER_STATE).read_text()))
    # The checkpoint closed its epoch.
    if batches_per_epoch is not None and state.batches_in_epoch >= batches_per_epoch:
        state.epoch, state.batches_in_epoch = state.epoch + 1, 0
    logger.info(f"Resumed from {path} at step {state.step} (epoch {state.epoch}, batch {state.batches_in_epoch}).")
    return state


def read_data_state(path: Path, process_index: int) -> dict:
    """The `data_state` a process saved in the checkpoint at `path`."""
    return torch.load(path / DATA_STATE.format(process=process_index), weights_only=True)


def saved_data_states(path: Path) -> int:
    """How many processes saved a data state in the checkpoint at `path` (0: none, a run without --streaming)."""
    return len(list(path.glob(DATA_STATE.format(process="*"))))


def read_run_args(path: Path) -> dict | None:
    """The arguments a checkpoint was saved with (verified by its manifest); None for a checkpoint saved before they
    were recorded."""
    file = path / RUN_ARGS
    return json.loads(file.read_text()) if file.is_file() else None


def find_checkpoint(value: str, output_dir: str) -> Path:
    """Resolve --resume_from_checkpoint to a verified checkpoint folder.

    'latest' is the highest-numbered complete checkpoint-N under output_dir: newer ones that fail verification are
    skipped, with a warning that names them and what is wrong. An explicit folder must pass verification.
    """
    if value == "latest":
        root = Path(output_dir) / CHECKPOINTS_DIR
        skipped = []
        for path in reversed(numbered_checkpoints(root)):
            problem = checkpoint_problem(path)
            if problem is None:
                if skipped:
                    warn(f"--resume_from_checkpoint latest: skipped {'; '.join(skipped)}. Resuming from {path} "
                         "instead.")
                return path
            skipped.append(f"{path} ({problem})")
        if skipped:
            raise ValueError(f"--resume_from_checkpoint latest: no checkpoint in {root} can be resumed: "
                             f"{'; '.join(skipped)}.")
        raise ValueError(f"--resume_from_checkpoint latest: there is no checkpoint in {root}.")
    path = Path(value)
    if not ((path / MANIFEST).is_file() or (path / TRAINER_STATE).is_file()):
        raise ValueError(f"--resume_from_checkpoint {value!r} is not a checkpoint folder (no {MANIFEST} or "
                         f"{TRAINER_STATE}); pass a {CHECKPOINTS_DIR}/checkpoint-N folder or 'latest'.")
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ValueError(f"--resume_from_checkpoint {value!r} cannot be resumed: {problem}.")
    return path


def numbered_checkpoints(root: Path) -> list[Path]:
    """The checkpoint-N folders under `root`, oldest (lowest N) first; tmp-checkpoint-N ones are not among them."""
    numbered = [(int(match[1]), path) for path in (root.iterdir() if root.is_dir() else [])
                if (match := re.fullmatch(r"checkpoint-(\d+)", path.name)) and path.is_dir()]
    return [path for _, path in sorted(numbered)]


def checkpoint_problem(path: Path) -> str | None:
    """What is wrong with a checkpoint folder, checked against its manifest; None when every file is intact."""
    try:
        files = json.loads((path / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return f"it has no {MANIFEST}, which is written last: it was not saved completely"
    except (ValueError, KeyError, TypeError) as error:
        return f"its {MANIFEST} is unreadable ({error!r})"
    if TRAINER_STATE not in files:
        return f"its {MANIFEST} does not list {TRAINER_STATE}"
    return files_problem(path, files)


def is_in_checkpoints_of(path: Path | None, output_dir: str) -> bool:
    """Whether `path` is a checkpoint of the run in `output_dir`."""
    return path is not None and path.resolve().parent == (Path(output_dir) / CHECKPOINTS_DIR).resolve()


def write_manifest(folder: Path):
    """List every file of `folder` with its size and sha256, into a temporary file renamed into place."""
    names = [str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file() and path.name != MANIFEST]
    write_text_atomically(folder / MANIFEST, json.dumps({"files": describe_files(folder, names)}, indent=1))


def read_checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's model weights as one full state dict on the CPU, read in this process (no process group),
    whichever form accelerate's `save_state` gave them. A tied weight may appear under one of its names only."""
    for name in UNSHARDED_WEIGHTS:
        if (path / name).is_file():
            if name.endswith(".safetensors"):
                return safetensors.torch.load_file(path / name)
            return torch.load(path / name, map_location="cpu", weights_only=True)
    if (path / SHARDED_WEIGHTS).is_dir():
        return read_sharded_weights(path / SHARDED_WEIGHTS)
    raise ValueError(f"{path} holds none of the model weights accelerate's save_state writes "
                     f"({', '.join(UNSHARDED_WEIGHTS)} or a {SHARDED_WEIGHTS} folder).")


def read_sharded_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The FSDP shards of a torch.distributed.checkpoint folder put back together as full tensors.

    Its metadata gives every tensor's full shape and dtype: `dcp.load` fills tensors of those shapes, each shard into
    its place, in this one process (`no_dist`). accelerate saved {"model": state_dict}, stored as "model.<name>".
    """
    reader = dcp.FileSystemReader(folder)
    entries = reader.read_metadata().state_dict_metadata
    state = {key: torch.empty(entry.size, dtype=entry.properties.dtype) for key, entry in entries.items()
             if isinstance(entry, TensorStorageMetadata)}
    if not state or any(not key.startswith("model.") for key in entries):
        raise ValueError(f"{folder} is not the model state accelerate's save_state writes under FSDP (a "
                         "torch.distributed.checkpoint of {'model': state_dict}).")
    with warnings.catch_warnings():  # dcp warns that it "assumes the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, storage_reader=reader, no_dist=True)
    return {key.removeprefix("model."): tensor for key, tensor in state.items()}


def save_model(accelerator: Accelerator, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
               output_dir: str, generation: dict) -> list[str]:
    """Safetensors weights, config (with auto_map and code), generation config and tokenizer, as `save_pretrained`
    writes them. An encoder-decoder's generation config gets `generation`, how its evaluation decoded (beams, length
    penalty, `max_new_tokens`: the length it was trained to).

    Returns the names of the files written (on the main process; [] on the others), for the summary's checksums."""
    before = file_stamps(Path(output_dir)) if accelerator.is_main_process else {}
    # Under FSDP this gathers the full state dict (onto the main process); every rank takes part.
    state_dict = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    if isinstance(unwrapped, FSDPModule):
        unwrapped = unsharded_twin(unwrapped)
        # The gather gives each tied weight a tensor of its own: point every tied key at its source again, so that
        # save_pretrained drops the copies (it finds ties by shared storage) as it does for an unsharded model.
        for target, source in unwrapped.all_tied_weights_keys.items():
            if target in state_dict and source in state_dict:
                state_dict[target] = state_dict[source]
    if unwrapped.can_generate():
        set_generation_defaults(unwrapped.generation_config, unwrapped.config, tokenizer, generation)
    unwrapped.save_pretrained(output_dir, is_main_process=accelerator.is_main_process,
                              save_function=accelerator.save, state_dict=state_dict)
    if accelerator.is_main_process:
        tokenizer.save_pretrained(output_dir)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return []
    # Compared rather than listed: which files a tokenizer class or the code-file copy writes varies.
    return sorted(name for name, stamp in file_stamps(Path(output_dir)).items() if before.get(name) != stamp)


def file_stamps(folder: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, modification time in ns, size) of each file directly in `folder`: a file written anew changes its."""
    return {path.name: (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            for path in folder.iterdir() if path.is_file() and (stat := path.stat())}
