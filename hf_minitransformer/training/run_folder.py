"""--output_dir holds one run: who may write there, and the summary that closes the run.

A run in progress holds a lock on the folder (the OS releases it when the process dies). A folder that holds an
earlier run's files is refused unless the run resumes in it or --overwrite_output_dir is given. The summary is written
last, with the size and sha256 of every file the final save wrote: `read_finished_run` (scripts/publish.py,
scripts/show_model.py) checks that model, tokenizer and summary still come from that one run.
"""

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
from transformers import AutoTokenizer

from ..atomic_files import write_text_atomically
from ..manifest import files_problem
from .checkpointing import CHECKPOINTS_DIR, is_in_checkpoints_of
from .tasks import TASKS
from .tracking import LOG_FILE


logger = get_logger(__name__)

SUMMARY_FILE = "training_summary.json"  # written last: its presence means the run finished
LOCK_FILE = ".train.lock"  # flock-ed by the run using the folder
WORK_TOKENIZER = ".train-tokenizer"  # a newly trained tokenizer, shared by the ranks until the final save
# What a run writes into --output_dir; --overwrite_output_dir removes these (and leaves any other file alone).
RUN_FILES = ("config.json", "generation_config.json", "model.safetensors", "model-*.safetensors",
             "model.safetensors.index.json", "*_minitransformer.py", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja",
             SUMMARY_FILE, LOG_FILE, CHECKPOINTS_DIR, "train", "averaged")
# Config fields that training_summary.json and config.json must agree on: otherwise the folder mixes two runs.
IDENTITY_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                   "max_position_embeddings")


@contextlib.contextmanager
def claim_output_dir(accelerator: Accelerator, output_dir: str, overwrite: bool, resume_path: Path | None):
    """Hold --output_dir for this run: one lock per run (taken by the main process, its verdict shared with every
    rank), and a folder that holds an earlier run's files only when resuming it or told to overwrite it.

    Yields the earlier run's files that --overwrite_output_dir replaces: the caller removes them with
    `remove_earlier_run` once every argument and the data have been checked, so that a run refused for bad input
    deletes nothing.
    """
    lock, problem, earlier = None, None, []
    if accelerator.is_main_process:
        lock, problem, earlier = lock_and_check_output_dir(output_dir, overwrite, resume_path)
    problem = broadcast_object_list([problem])[0]
    try:
        if problem is not None:
            raise ValueError(problem)
        yield earlier
    finally:
        if lock is not None:
            lock.close()  # releases the flock; a killed process has it released by the OS


def lock_and_check_output_dir(output_dir: str, overwrite: bool, resume_path: Path | None):
    """(the locked file, None, the earlier run's files to replace), or (None, why this run may not use the folder,
    [])."""
    folder = Path(output_dir)
    lock = (folder / LOCK_FILE).open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "a process"
        lock.close()
        return None, (f"--output_dir {output_dir!r} is in use by another training run ({holder}); wait for "
                      "it to end, or pick another --output_dir."), []
    # A run that failed before its final save leaves its working tokenizer: not a run's output, and never reused.
    shutil.rmtree(folder / WORK_TOKENIZER, ignore_errors=True)
    entries = sorted(path.name for path in folder.iterdir() if path.name != LOCK_FILE)
    earlier = []
    if entries and not is_in_checkpoints_of(resume_path, output_dir):
        if not overwrite:
            lock.close()
            shown = ", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "")
            return None, (f"--output_dir {output_dir!r} already holds files ({shown}). Pass "
                          "--overwrite_output_dir to replace that run, --resume_from_checkpoint latest to continue "
                          "it, or another --output_dir."), []
        earlier = sorted({path.name for pattern in RUN_FILES for path in folder.glob(pattern)})
    lock.seek(0)
    lock.truncate()  # who holds the folder, for the message of a run refused meanwhile
    lock.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    lock.flush()
    return lock, None, earlier


def remove_earlier_run(accelerator: Accelerator, output_dir: str, names: list[str]):
    """--overwrite_output_dir: remove the earlier run's files (and leave any other file alone)."""
    if accelerator.is_main_process and names:
        for name in names:
            path = Path(output_dir) / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        logger.warning(f"--overwrite_output_dir: removed the earlier run's {', '.join(names)} from {output_dir}.")
    accelerator.wait_for_everyone()


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


def stopped_early_note(steps: int, planned: int, max_seconds: float) -> str:
    """The last line of a run that --max_train_seconds cut short, and of show_model.py on its folder: its figures
    are not those of the planned run."""
    return (f"Training stopped early: {steps} of {planned} planned steps, when --max_train_seconds {max_seconds:g} "
            "ran out. The figures above are this shorter run's; the README's figures need all planned steps (a "
            "faster or less busy machine, or a larger --max_train_seconds).")


def finite_or_none(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(item) for item in value]
    return value


def read_finished_run(model_dir: Path) -> dict:
    """The summary of the finished run in `model_dir`, once the folder is known to hold that one run: config, weights,
    tokenizer and summary present and readable, every file the run's final save wrote as it was written (the
    summary's "files"), and config and tokenizer the ones the summary describes. ValueError names what is wrong."""
    shown = repr(str(model_dir))
    if not model_dir.is_dir():
        raise ValueError(f"{shown} is not a folder; pass the --output_dir of scripts/train.py.")
    has_weights = (model_dir / "model.safetensors").is_file() or (model_dir / "model.safetensors.index.json").is_file()
    if not (model_dir / "config.json").is_file() or not has_weights:
        raise ValueError(f"{shown} is not a training output: it needs config.json and model.safetensors.")
    if not any((model_dir / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise ValueError(f"{shown} has no tokenizer (tokenizer.json / tokenizer_config.json).")
    if not (model_dir / SUMMARY_FILE).is_file():
        raise ValueError(f"{shown} has no {SUMMARY_FILE}, which scripts/train.py writes when a run finishes; pass "
                         "the --output_dir of a finished run.")
    summary, config = read_json_object(model_dir / SUMMARY_FILE), read_json_object(model_dir / "config.json")
    if summary.get("task") not in TASKS:
        raise ValueError(f"{SUMMARY_FILE} of {shown} has task {summary.get('task')!r}; expected one of "
                         f"{', '.join(TASKS)}.")
    if not isinstance(summary.get("data"), dict):
        raise ValueError(f"{SUMMARY_FILE} of {shown} has no 'data' section (the data the run trained and was "
                         "evaluated on), which scripts/train.py always writes: it is not a training summary.")
    check_recorded_files(model_dir, summary)
    recorded = summary.get("config") if isinstance(summary.get("config"), dict) else {}
    for field in IDENTITY_FIELDS:
        if field in recorded and recorded[field] != config.get(field):
            raise ValueError(f"{shown} mixes two runs: {SUMMARY_FILE} describes a model with {field} "
                             f"{recorded[field]} but config.json has {config.get(field)}.")
    tokens = len(AutoTokenizer.from_pretrained(model_dir))
    expected = summary["data"].get("tokenizer_size")
    if tokens > config.get("vocab_size", tokens) or expected not in (None, tokens):
        raise ValueError(f"{shown} mixes two runs: its tokenizer has {tokens} tokens, but the model's vocab_size is "
                         f"{config.get('vocab_size')}" + (f" and training used a tokenizer of {expected}."
                                                          if expected is not None else "."))
    return summary


def check_recorded_files(model_dir: Path, summary: dict):
    """Every file the summary records must be there with its size and sha256; a summary from before the checksums
    were recorded is accepted with a note."""
    files = summary.get("files")
    if files is None:
        print(f"note: {SUMMARY_FILE} of {str(model_dir)!r} records no checksums (it predates them), so its files "
              "cannot be checked against the run that wrote them.")
        return
    try:
        problem = files_problem(model_dir, files)
    except (AttributeError, KeyError, TypeError) as error:
        raise ValueError(f"{SUMMARY_FILE} of {str(model_dir)!r} has an unreadable 'files' record "
                         f"({error!r}).") from None
    if problem is not None:
        raise ValueError(f"{str(model_dir)!r} does not hold the files its run saved: {problem}. The folder mixes two "
                         "runs or a file changed since training; train again, or restore the run's own files.")


def read_json_object(path: Path) -> dict:
    """A JSON file that must hold an object (as config.json and the summary do); ValueError otherwise."""
    try:
        value = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{str(path)!r} is not valid JSON: {error}.") from None
    if not isinstance(value, dict):
        raise ValueError(f"{str(path)!r} holds a JSON {type(value).__name__}, not the object (key: value) it must "
                         "hold.")
    return value
