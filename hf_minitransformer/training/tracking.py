"""Logging and trackers: the JSON-lines log every run writes, accelerate's trackers (--report_to), and the training
metrics logged every --logging_steps."""

import argparse
import importlib.util
import json
import logging
import os
import sys
import time
from pathlib import Path

import datasets
import torch
import transformers
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker, get_available_trackers
from accelerate.utils import LoggerType


LOG_FILE = "train_log.jsonl"


class JsonlTracker(GeneralTracker):
    """An accelerate tracker that appends each `accelerator.log` call to a JSON-lines file: always there to read."""

    name = "jsonl"
    requires_logging_directory = False

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    @property
    def tracker(self) -> Path:
        return self.path

    def store_init_configuration(self, values: dict):
        self._write({"config": values})

    def log(self, values: dict, step: int | None = None, **kwargs):
        self._write({"step": step, **values, "time": time.time()})

    def _write(self, record: dict):
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")


def trackers(args: argparse.Namespace) -> list:
    """What `Accelerator(log_with=...)` takes: the --report_to trackers and the JSON-lines log in --output_dir."""
    return tracker_names(args.report_to) + [JsonlTracker(Path(args.output_dir) / LOG_FILE)]


def tracker_names(report_to: str) -> list[str]:
    """The accelerate trackers of --report_to; an unknown name, or one whose package is missing, is refused."""
    if report_to == "auto":
        return ["tensorboard"] if importlib.util.find_spec("tensorboard") else []
    names = [] if report_to == "none" else [name.strip() for name in report_to.split(",") if name.strip()]
    known = [tracker.value for tracker in LoggerType]
    installed = [str(getattr(tracker, "value", tracker)) for tracker in get_available_trackers()]
    for name in names:
        if name not in known:
            raise ValueError(f"--report_to {name!r} is not an accelerate tracker; choose from 'auto', 'none', "
                             f"{', '.join(map(repr, known))}.")
        if name != "all" and name not in installed:
            raise ValueError(f"--report_to {name}: the {name} package is not installed (pip install {name}); "
                             f"installed trackers: {', '.join(installed) or 'none'}.")
    return names


def init_trackers(accelerator: Accelerator, args: argparse.Namespace, step: int):
    """Start the trackers; on resume from `step`, drop log lines the killed run wrote after its last checkpoint."""
    log_path = Path(args.output_dir) / LOG_FILE
    if accelerator.is_main_process and log_path.is_file():
        if step == 0:
            log_path.unlink()
        else:
            records = [line for line in log_path.read_text().splitlines()
                       if (json.loads(line).get("step") or 0) <= step]
            log_path.write_text("".join(line + "\n" for line in records))
    # Trackers such as tensorboard take scalars only.
    hparams = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in vars(args).items()}
    accelerator.init_trackers("train", config=hparams)


def setup_logging(accelerator: Accelerator):
    """INFO lines from the main process; the other ranks' libraries speak only of errors."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one INFO line per file of every checkpoint
    if not accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()


def warn(message: str):
    """A warning on stderr, once per run (from the first process), usable before the loggers are set up."""
    if os.environ.get("RANK", "0") == "0":
        print(f"warning: {message}", file=sys.stderr)


class TrainingMetrics:
    """The mean loss, tokens/s and gradient norm of the optimizer steps since the last log line."""

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator
        self.loss = torch.zeros((), device=accelerator.device)
        self.reset()

    def reset(self):
        self.loss, self.batches, self.tokens, self.since = torch.zeros_like(self.loss), 0, 0, time.time()

    def add(self, loss: torch.Tensor, tokens: int):
        """One micro-batch: its detached loss and the tokens it fed over all processes."""
        self.loss += loss
        self.batches += 1
        self.tokens += tokens

    def log(self, step: int, lr: float, epoch: int, tokens_seen: int, grad_norm: torch.Tensor | None) -> dict:
        """Log the window's metrics at `step` and start a new window. A collective: every rank calls it."""
        loss = self.accelerator.reduce(self.loss, reduction="mean").item() / self.batches
        metrics = {"loss": loss, "lr": lr, "epoch": epoch, "tokens_per_s": self.tokens / (time.time() - self.since),
                   "tokens_seen": tokens_seen}
        if grad_norm is not None:
            metrics["grad_norm"] = full_value(grad_norm)
        self.accelerator.log(metrics, step=step)
        self.reset()
        return metrics


def full_value(value: torch.Tensor) -> float:
    """A scalar as a float; under FSDP2 a gradient norm is a DTensor, which `full_tensor()` (a collective that
    every rank must reach) completes first."""
    return (value.full_tensor() if hasattr(value, "full_tensor") else value).item()
