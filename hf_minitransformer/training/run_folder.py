"""--output_dir holds one run: who may write there, and the summary that closes the run.

A run in progress holds a lock on the folder (the OS releases it when the process dies). A folder that holds an
earlier run's files is refused unless the run resumes in it or --overwrite_output_dir is given. The summary is written
last: its presence vouches that model, tokenizer and summary come from one finished run.
"""

import argparse
import contextlib
import fcntl
import json
import math
import os
import shutil
import socket
import time
from pathlib import Path

from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import broadcast_object_list

from ..atomic_files import write_text_atomically
from .checkpointing import CHECKPOINTS_DIR, is_in_checkpoints_of
from .tracking import LOG_FILE


logger = get_logger(__name__)

SUMMARY_FILE = "training_summary.json"  # written last: its presence means the run finished
LOCK_FILE = ".train.lock"  # flock-ed by the run using the folder
WORK_TOKENIZER = ".train-tokenizer"  # a newly trained tokenizer, shared by the ranks until the final save
# What a run writes into --output_dir; --overwrite_output_dir removes these (and leaves any other file alone).
RUN_FILES = ("config.json", "generation_config.json", "model.safetensors", "model-*.safetensors",
             "model.safetensors.index.json", "*_minitransformer.py", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja",
             SUMMARY_FILE, LOG_FILE, CHECKPOINTS_DIR, "train", WORK_TOKENIZER)


@contextlib.contextmanager
def claim_output_dir(accelerator: Accelerator, args: argparse.Namespace, resume_path: Path | None):
    """Hold --output_dir for this run: one lock per run (taken by the main process, its verdict shared with every
    rank), and a folder that holds an earlier run's files only when resuming it or told to overwrite it."""
    lock, problem = None, None
    if accelerator.is_main_process:
        lock, problem = lock_and_check_output_dir(args, resume_path)
    problem = broadcast_object_list([problem])[0]
    try:
        if problem is not None:
            raise ValueError(problem)
        yield
    finally:
        if lock is not None:
            lock.close()  # releases the flock; a killed process has it released by the OS


def lock_and_check_output_dir(args: argparse.Namespace, resume_path: Path | None):
    """(the locked file, None), or (None, why this run may not use the folder)."""
    output_dir = Path(args.output_dir)
    lock = (output_dir / LOCK_FILE).open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "a process"
        lock.close()
        return None, (f"--output_dir {args.output_dir!r} is in use by another training run ({holder}); wait for "
                      "it to end, or pick another --output_dir.")
    entries = sorted(path.name for path in output_dir.iterdir() if path.name != LOCK_FILE)
    if entries and not is_in_checkpoints_of(resume_path, args.output_dir):
        if not args.overwrite_output_dir:
            lock.close()
            shown = ", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "")
            return None, (f"--output_dir {args.output_dir!r} already holds files ({shown}). Pass "
                          "--overwrite_output_dir to replace that run, --resume_from_checkpoint latest to continue "
                          "it, or another --output_dir.")
        removed = sorted({path.name for pattern in RUN_FILES for path in output_dir.glob(pattern)})
        for name in removed:
            path = output_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        logger.warning(f"--overwrite_output_dir: removed the earlier run's {', '.join(removed) or 'nothing'} from "
                       f"{args.output_dir}.")
    lock.seek(0)
    lock.truncate()  # who holds the folder, for the message of a run refused meanwhile
    lock.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    lock.flush()
    return lock, None


def discard_summary(accelerator: Accelerator, output_dir: str):
    """Before the final save: an earlier summary must not vouch for files this run is about to replace."""
    if accelerator.is_main_process:
        (Path(output_dir) / SUMMARY_FILE).unlink(missing_ok=True)
    accelerator.wait_for_everyone()


def write_summary(output_dir: Path, summary: dict):
    """Strict JSON (a metric that is not a finite number, such as an evaluation with nothing to score, is null),
    written to a temporary file renamed into place."""
    write_text_atomically(output_dir / SUMMARY_FILE,
                          json.dumps(finite_or_none(summary), indent=2, allow_nan=False) + "\n")


def finite_or_none(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(item) for item in value]
    return value
