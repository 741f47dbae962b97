"""Logging and trackers: the JSON-lines log every run writes, accelerate's trackers (--report_to), and the training
metrics logged every --logging_steps."""

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


def trackers(report_to: str, output_dir: str) -> list:
    """What `Accelerator(log_with=...)` takes: the --report_to trackers and the JSON-lines log in --output_dir."""
    return tracker_names(report_to) + [JsonlTracker(Path(output_dir) / LOG_FILE)]


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


def init_trackers(accelerator: Accelerator, output_dir: str, hparams: dict, step: int):
    """Start the trackers; on resume from `step`, drop log lines the killed run wrote after its last checkpoint."""
    log_path = Path(output_dir) / LOG_FILE
    if accelerator.is_main_process and log_path.is_file():
        if step == 0:
            log_path.unlink()
        else:
            records = [line for line in log_path.read_text().splitlines()
                       if (json.loads(line).get("step") or 0) <= step]
            log_path.write_text("".join(line + "\n" for line in records))
    # Trackers such as tensorboard take scalars only.
    scalars = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in hparams.items()}
    accelerator.init_trackers("train", config=scalars)


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
        # This process's tokens that are not padding (a tensor, read only when logged) and all its tokens.
        self.real_tokens, self.padded_tokens = torch.zeros_like(self.loss), 0

    def add(self, loss: torch.Tensor, tokens: int, batch: dict):
        """One micro-batch: its detached loss, the tokens it fed over all processes, and the batch itself."""
        self.loss += loss
        self.batches += 1
        self.tokens += tokens
        self.real_tokens += real_tokens(batch)
        self.padded_tokens += padded_tokens(batch)

    def log(self, step: int, lr: float, epoch: int, tokens_seen: int, grad_norm: torch.Tensor | None) -> dict:
        """Log the window's metrics at `step` and start a new window. A collective: every rank calls it."""
        loss = self.accelerator.reduce(self.loss, reduction="mean").item() / self.batches
        counts = torch.stack([self.real_tokens, torch.full_like(self.real_tokens, self.padded_tokens)])
        real, padded = self.accelerator.reduce(counts, reduction="sum").tolist()
        metrics = {"loss": loss, "lr": lr, "epoch": epoch, "tokens_per_s": self.tokens / (time.time() - self.since),
                   "tokens_seen": tokens_seen, "non_padding_share": real / padded}
        if grad_norm is not None:
            metrics["grad_norm"] = full_value(grad_norm)
        self.accelerator.log(metrics, step=step)
        self.reset()
        return metrics


def padded_tokens(batch: dict) -> int:
    """Tokens a batch feeds the model, padding included: the (source) input_ids, plus the decoder inputs if any."""
    return sum(batch[name].numel() for name in ("input_ids", "decoder_input_ids") if name in batch)


def real_tokens(batch: dict) -> torch.Tensor | int:
    """The tokens of `padded_tokens` that are not padding: the attention mask's ones (all, for packed blocks), plus
    the decoder's scored positions. Counted on the batch's device, so no step waits for the number."""
    mask = batch.get("attention_mask")
    count = mask.sum() if mask is not None else batch["input_ids"].numel()
    if "decoder_input_ids" in batch:  # the labels shifted right: one decoder input per scored label
        count = count + (batch["labels"] != -100).sum()
    return count


def full_value(value: torch.Tensor) -> float:
    """A scalar as a float; under FSDP2 a gradient norm is a DTensor, which `full_tensor()` (a collective that
    every rank must reach) completes first."""
    return (value.full_tensor() if hasattr(value, "full_tensor") else value).item()
