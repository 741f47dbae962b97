"""Resumable checkpoints and the final model save.

A checkpoint is accelerate's `save_state` (model, optimizer, scheduler, sampler, every rank's RNG states; sharded
under FSDP) plus the tokenizer and a `TrainState`, written under a temporary name and renamed when complete, with a
manifest (size and sha256 of every file) written last: a resume verifies each file against it. The final save
gathers the full state dict (under FSDP every rank takes part) and writes a `save_pretrained` folder.
"""

import dataclasses
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from torch.distributed.fsdp import FSDPModule
from transformers import PreTrainedTokenizerBase

from ..atomic_files import write_text_atomically
from .distributed import unsharded_twin
from .tracking import warn


logger = get_logger(__name__)

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.json"
MANIFEST = "manifest.json"  # every file of a checkpoint with its size and sha256, written last


@dataclasses.dataclass
class TrainState:
    """Where training stands; saved beside each accelerate checkpoint, so a resumed run continues exactly."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of `epoch` already consumed, per process
    tokens_seen: int = 0  # over all processes (padding of the last uneven batch included)
    train_seconds: float = 0.0  # wall time spent training, summed over resumes


def save_checkpoint(accelerator: Accelerator, output_dir: str, state: TrainState, tokenizer: PreTrainedTokenizerBase,
                    total_limit: int):
    """`save_state` into a temporary folder renamed when complete: a checkpoint-N folder is never half-written, and
    its manifest lets a resume detect a file damaged since. Only the newest `total_limit` checkpoints are kept."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    final, partial = root / f"checkpoint-{state.step}", root / f"tmp-checkpoint-{state.step}"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)  # left by a run killed while saving
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))  # model, optimizer, scheduler, sampler, every rank's RNG states
    if accelerator.is_main_process:
        tokenizer.save_pretrained(partial)
        (partial / TRAINER_STATE).write_text(json.dumps(dataclasses.asdict(state), indent=2))
    accelerator.wait_for_everyone()  # save_state has no barrier of its own: all ranks must have written
    if accelerator.is_main_process:
        write_manifest(partial)  # last: resuming verifies every file against it
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        for old in numbered_checkpoints(root)[:-total_limit]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def load_checkpoint(accelerator: Accelerator, path: Path, batches_per_epoch: int) -> TrainState:
    """Restore everything `save_checkpoint` saved; returns where training stands."""
    accelerator.load_state(str(path))
    state = TrainState(**json.loads((path / TRAINER_STATE).read_text()))
    if state.batches_in_epoch >= batches_per_epoch:  # the checkpoint closed its epoch
        state.epoch, state.batches_in_epoch = state.epoch + 1, 0
    logger.info(f"Resumed from {path} at step {state.step} (epoch {state.epoch}, batch {state.batches_in_epoch}).")
    return state


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
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != expected["bytes"]:
            return f"{name} has {size} bytes where {expected['bytes']} were saved (truncated or overwritten)"
        if file_sha256(file) != expected["sha256"]:
            return f"{name} does not match the checksum it was saved with (corrupted)"
    return None


def is_in_checkpoints_of(path: Path | None, output_dir: str) -> bool:
    """Whether `path` is a checkpoint of the run in `output_dir`."""
    return path is not None and path.resolve().parent == (Path(output_dir) / CHECKPOINTS_DIR).resolve()


def write_manifest(folder: Path):
    """List every file of `folder` with its size and sha256, into a temporary file renamed into place."""
    files = {str(path.relative_to(folder)): {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
             for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MANIFEST}
    write_text_atomically(folder / MANIFEST, json.dumps({"files": files}, indent=1))


def file_sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def save_model(accelerator: Accelerator, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
               output_dir: str, max_new_tokens: int | None = None):
    """Safetensors weights, config (with auto_map and code), generation config and tokenizer, as `save_pretrained`
    writes them. An encoder-decoder's generation config gets `max_new_tokens`, the length it was trained to."""
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
        generation_config = unwrapped.generation_config
        generation_config.pad_token_id = tokenizer.pad_token_id
        generation_config.bos_token_id = tokenizer.bos_token_id
        generation_config.eos_token_id = tokenizer.eos_token_id
        if unwrapped.config.is_encoder_decoder:
            generation_config.decoder_start_token_id = unwrapped.config.decoder_start_token_id
            # Without it `generate` stops at 20 tokens (max_length), shorter than the targets it was trained on.
            generation_config.max_new_tokens = max_new_tokens
    unwrapped.save_pretrained(output_dir, is_main_process=accelerator.is_main_process,
                              save_function=accelerator.save, state_dict=state_dict)
    if accelerator.is_main_process:
        tokenizer.save_pretrained(output_dir)
    accelerator.wait_for_everyone()

