#!/usr/bin/env python
"""Train a MiniTransformer with accelerate: causal LM (default), masked LM, or encoder-decoder (seq2seq).

The same script runs on one CPU, one GPU, 8 GPUs (DDP or FSDP) and several nodes; the launcher decides which. With no
arguments it trains the `small` causal LM on the embedded corpus (the Python standard library's own source, no
download) for 2 epochs (974 steps, about 8 minutes on 2 CPU cores), and writes a model folder that
`AutoModelForCausalLM` loads. The README's main job stops at 800 steps, with a 7-minute safety limit:

    python scripts/train.py --output_dir outputs/main_job --max_train_steps 800 --max_train_seconds 420
    python scripts/show_model.py outputs/main_job

With `--task seq2seq` and no data, it trains the `small` MiniTransformerForSeq2SeqLM (4 encoder + 4 decoder layers) on
the embedded task, also without download: the code of each documented function of the same standard-library modules
-> the first line of its docstring (about 2,500 training pairs; the held-out pairs come from whole modules). 2 epochs
(314 steps) take about 5 minutes on 2 CPU cores; evaluation adds BLEU, chrF and exact match of generated docstring
lines, next to always answering the most frequent training target:

    python scripts/train.py --task seq2seq --output_dir outputs/seq2seq
    python scripts/show_model.py outputs/seq2seq
    # Seq2seq on your own pairs: two columns of json/jsonl/csv/parquet files (or of a Hub dataset)
    python scripts/train.py --task seq2seq --train_file pairs.jsonl --source_column code --target_column doc \
        --max_source_length 256 --max_target_length 32 --generation_num_beams 4 --output_dir outputs/doc

    # One CPU or one GPU (plain python works as well as `accelerate launch`)
    python scripts/train.py --output_dir outputs/small-clm
    accelerate launch --config_file configs/accelerate/single_gpu.yaml scripts/train.py --output_dir outputs/small-clm
    # Masked LM on your own files (text, json, csv or parquet)
    python scripts/train.py --task mlm --train_file train.txt --validation_file valid.txt --output_dir outputs/mlm
    # 8 GPUs on one machine, DDP or FSDP (FSDP shards each MiniTransformerLayer)
    accelerate launch --config_file configs/accelerate/ddp_8gpu.yaml scripts/train.py --model_config base ...
    accelerate launch --config_file configs/accelerate/fsdp_8gpu.yaml scripts/train.py --model_config base ...
    # 2 nodes x 8 GPUs: run on each node, with its rank (output_dir on a filesystem both nodes share)
    accelerate launch --config_file configs/accelerate/multinode_2x8.yaml --machine_rank 0 \
        --main_process_ip 10.0.0.1 scripts/train.py --model_config base --output_dir /shared/outputs/base
    # Two processes on a CPU-only machine (ACCELERATE_USE_CPU is required, `--cpu --num_processes 2` starts one)
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
        --dynamo_backend no --main_process_port 0 scripts/train.py --output_dir outputs/ddp-cpu
    # Resume the run in --output_dir exactly where its last checkpoint left it
    python scripts/train.py --output_dir outputs/small-clm --resume_from_checkpoint latest

Outputs in --output_dir: model (safetensors) + config + generation config + tokenizer, `training_summary.json`,
`train_log.jsonl` (every logged metric), tensorboard events when tensorboard is installed, and `checkpoints/`. A folder
holds one run: one that already holds files is refused unless the run resumes in it or --overwrite_output_dir is
given, a run in progress holds a lock on it, and model, tokenizer and summary are written together at the end.
"""

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.util
import itertools
import json
import logging
import math
import os
import re
import shutil
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import datasets
import sacrebleu
import torch
import transformers
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.logging import get_logger
from accelerate.tracking import GeneralTracker, get_available_trackers
from accelerate.utils import LoggerType, broadcast_object_list, set_seed
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import StrictDataclassError
from huggingface_hub.utils import validate_repo_id
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    DataCollatorForSeq2Seq,
    PreTrainedTokenizerBase,
    SchedulerType,
    default_data_collator,
    get_scheduler,
)
from transformers.trainer_pt_utils import LabelSmoother

import hf_minitransformer  # noqa: F401  (registers MiniTransformer with the Auto classes)
from hf_minitransformer import (
    MiniTransformerConfig,
    MiniTransformerForCausalLM,
    MiniTransformerForMaskedLM,
    MiniTransformerForSeq2SeqLM,
)
from hf_minitransformer.atomic_files import write_text_atomically
from hf_minitransformer.data import (
    EMBEDDED_SEQ2SEQ_TASKS,
    SPECIAL_TOKENS,
    DataArgs,
    Seq2SeqDataArgs,
    describe_pairs,
    load_raw_datasets,
    load_seq2seq_datasets,
    text_batches,
    tokenize_and_pack,
    tokenize_pairs,
    train_bpe_tokenizer,
)
from hf_minitransformer.presets import PRESETS, config_from_preset


logger = get_logger(__name__)

# Task -> (Auto class that loads a saved model, class that builds a new one).
MODEL_CLASSES = {
    "clm": (AutoModelForCausalLM, MiniTransformerForCausalLM),
    "mlm": (AutoModelForMaskedLM, MiniTransformerForMaskedLM),
    "seq2seq": (AutoModelForSeq2SeqLM, MiniTransformerForSeq2SeqLM),
}
TASKS = tuple(MODEL_CLASSES)
MIXED_PRECISION = ("no", "fp16", "bf16")
CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.json"
MANIFEST = "manifest.json"  # every file of a checkpoint with its size and sha256, written last
LOG_FILE = "train_log.jsonl"
SUMMARY_FILE = "training_summary.json"  # written last: its presence means the run finished
LOCK_FILE = ".train.lock"  # flock-ed by the run using the folder; the OS releases it when the process dies
WORK_TOKENIZER = ".train-tokenizer"  # a newly trained tokenizer, shared by the ranks until the final save
# What a run writes into --output_dir; --overwrite_output_dir removes these (and leaves any other file alone).
RUN_FILES = ("config.json", "generation_config.json", "model.safetensors", "model-*.safetensors",
             "model.safetensors.index.json", "*_minitransformer.py", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja",
             SUMMARY_FILE, LOG_FILE, CHECKPOINTS_DIR, "train", WORK_TOKENIZER)
# --recipe: the defaults of the optimization flags. "paper" is Vaswani et al. §5.3-5.4: Adam (no weight decay) with
# beta2 0.98 and eps 1e-9, linear warmup then learning rate ~ 1/sqrt(step), and label smoothing 0.1.
RECIPES = {
    "default": {},
    "paper": {"label_smoothing_factor": 0.1, "adam_beta1": 0.9, "adam_beta2": 0.98, "adam_epsilon": 1e-9,
              "weight_decay": 0.0, "lr_scheduler_type": "inverse_sqrt"},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _add_model_args(parser.add_argument_group("model"))
    _add_data_args(parser.add_argument_group("data and tokenizer"))
    _add_optimization_args(parser.add_argument_group("optimization"))
    _add_output_args(parser.add_argument_group("logging, checkpoints and output"))
    _add_seq2seq_args(parser.add_argument_group("seq2seq data and evaluation (--task seq2seq)"))
    # A recipe changes the defaults of its flags; a flag given explicitly still wins.
    recipe = parser.parse_known_args(argv)[0].recipe
    parser.set_defaults(**RECIPES[recipe])
    return parser.parse_args(argv)


def _add_model_args(group: argparse._ArgumentGroup):
    group.add_argument("--task", choices=TASKS, default="clm",
                       help="clm: causal (next-token) LM, MiniTransformerForCausalLM; mlm: masked LM, "
                            "MiniTransformerForMaskedLM; seq2seq: encoder-decoder from source to target text, "
                            "MiniTransformerForSeq2SeqLM.")
    group.add_argument("--model_config", default="small",
                       help=f"A preset name ({', '.join(PRESETS)}) or the path of a config.json (from scratch).")
    group.add_argument("--config_overrides", default=None,
                       help="Comma-separated config fields to override, e.g. 'hidden_dropout_prob=0.0,"
                            "num_hidden_layers=2'.")
    group.add_argument("--init_from", default=None,
                       help="A saved model folder to continue training from, instead of --model_config.")


def _add_data_args(group: argparse._ArgumentGroup):
    group.add_argument("--dataset_name", default=None, help="A dataset on the Hugging Face Hub (needs a connection).")
    group.add_argument("--dataset_config_name", default=None, help="The configuration of --dataset_name.")
    group.add_argument("--train_file", default=None,
                       help="Training data: .txt/.text/.md, .json/.jsonl, .csv or .parquet.")
    group.add_argument("--validation_file", default=None,
                       help="Validation data, same format as --train_file. Without it, part of the data is held out.")
    group.add_argument("--text_column", default="text", help="The column holding the text in json/csv/parquet data.")
    group.add_argument("--validation_split_percentage", type=float, default=5.0,
                       help="Percentage of the data held out for validation when there is no validation split.")
    group.add_argument("--max_corpus_bytes", type=int, default=4_000_000,
                       help="Size cap of the embedded corpus (used when no dataset or file is given).")
    group.add_argument("--block_size", type=int, default=128, help="Tokens per training sequence (packed).")
    group.add_argument("--preprocessing_num_workers", type=int, default=None,
                       help="Processes for tokenizing (Dataset.map num_proc).")
    group.add_argument("--tokenizer_name", default=None,
                       help="A saved tokenizer folder (or Hub id). Default: train a byte-level BPE on the training "
                            "data, sources and targets for seq2seq (or reuse the tokenizer of --init_from / of the "
                            "resumed checkpoint).")
    group.add_argument("--vocab_size", type=int, default=4096, help="Vocabulary size of the trained BPE tokenizer.")
    group.add_argument("--split_digits", action="store_true",
                       help="The trained BPE tokenizer keeps every digit a token of its own (numbers never seen in "
                            "training are spelled with known tokens); always on for --embedded_task dates.")


def _add_optimization_args(group: argparse._ArgumentGroup):
    group.add_argument("--per_device_train_batch_size", type=int, default=16, help="Sequences per device per step.")
    group.add_argument("--per_device_eval_batch_size", type=int, default=32, help="Sequences per device in eval.")
    group.add_argument("--gradient_accumulation_steps", type=int, default=1,
                       help="Micro-batches accumulated into one optimizer step.")
    group.add_argument("--learning_rate", type=float, default=1e-3, help="Peak learning rate of AdamW.")
    group.add_argument("--weight_decay", type=float, default=0.1,
                       help="AdamW weight decay, applied to matrices only (not biases or LayerNorm).")
    group.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm (0: no clipping).")
    group.add_argument("--num_train_epochs", type=int, default=2, help="Passes over the training data.")
    group.add_argument("--max_train_steps", type=int, default=None,
                       help="Total optimizer steps; overrides --num_train_epochs when given.")
    group.add_argument("--max_train_seconds", type=float, default=None,
                       help="Safety limit: stop (then evaluate and save) after this much training time, even "
                            "before the last step; the summary records it. Counted per launch, not over resumes.")
    group.add_argument("--lr_scheduler_type", default="cosine",
                       help="Any transformers scheduler name (linear, cosine, constant_with_warmup, ...).")
    group.add_argument("--num_warmup_steps", type=int, default=50, help="Linear warmup steps of the scheduler.")
    group.add_argument("--recipe", choices=tuple(RECIPES), default="default",
                       help="paper: the training recipe of Vaswani et al. (label smoothing 0.1, Adam betas (0.9, "
                            "0.98), eps 1e-9, no weight decay, inverse_sqrt schedule after --num_warmup_steps); flags "
                            "given explicitly override it.")
    group.add_argument("--label_smoothing_factor", type=float, default=0.0,
                       help="Label smoothing of the training loss (transformers' LabelSmoother; the paper uses 0.1). "
                            "The evaluation loss stays plain cross-entropy.")
    group.add_argument("--adam_beta1", type=float, default=0.9, help="AdamW beta1.")
    group.add_argument("--adam_beta2", type=float, default=0.95, help="AdamW beta2 (the paper: 0.98).")
    group.add_argument("--adam_epsilon", type=float, default=1e-8, help="AdamW epsilon (the paper: 1e-9).")
    group.add_argument("--mlm_probability", type=float, default=0.15, help="Fraction of tokens masked (mlm task).")
    group.add_argument("--mixed_precision", choices=MIXED_PRECISION, default=None,
                       help="Override the launcher's mixed precision; bf16 works on CPU, fp16 needs a GPU.")
    group.add_argument("--seed", type=int, default=42, help="Seed of weights, data order, masking and dropout.")


def _add_output_args(group: argparse._ArgumentGroup):
    group.add_argument("--output_dir", default="outputs/minitransformer", help="Where everything is written.")
    group.add_argument("--overwrite_output_dir", action="store_true",
                       help="Replace the files of an earlier run in --output_dir (without it, a folder that holds "
                            "files is refused unless --resume_from_checkpoint continues the run in it).")
    group.add_argument("--logging_steps", type=int, default=10, help="Log training metrics every N steps.")
    group.add_argument("--eval_steps", type=int, default=None,
                       help="Evaluate every N steps (default: at the end only).")
    group.add_argument("--checkpointing_steps", type=int, default=None,
                       help="Save a resumable checkpoint every N optimizer steps (default: none).")
    group.add_argument("--checkpoints_total_limit", type=int, default=2, help="Keep only the last K checkpoints.")
    group.add_argument("--resume_from_checkpoint", default=None,
                       help="A checkpoint folder, or 'latest' for the newest one in --output_dir/checkpoints.")
    group.add_argument("--report_to", default="auto",
                       help="Accelerate tracker(s) besides the JSON-lines log: 'auto' (tensorboard if installed), "
                            "'none', or names such as 'tensorboard,wandb'.")


def _add_seq2seq_args(group: argparse._ArgumentGroup):
    group.add_argument("--source_column", default="source", help="The column holding the source (input) text.")
    group.add_argument("--target_column", default="target", help="The column holding the target (output) text.")
    group.add_argument("--embedded_task", choices=EMBEDDED_SEQ2SEQ_TASKS, default="docstrings",
                       help="The pairs used without --dataset_name or --train_file: docstrings (a standard-library "
                            "function's code -> its docstring's first line) or dates (a date in one of 19 human "
                            "formats -> ISO 8601, validated on years never trained on).")
    group.add_argument("--max_source_length", type=int, default=256, help="Source tokens kept (truncated after).")
    group.add_argument("--max_target_length", type=int, default=32,
                       help="Target tokens kept, the closing end-of-sequence token included.")
    group.add_argument("--max_eval_generate_samples", type=int, default=200,
                       help="Evaluation generates the targets of this many validation pairs (the first ones) and "
                            "scores them with BLEU, chrF and exact match.")
    group.add_argument("--generation_num_beams", type=int, default=1,
                       help="Beams of the evaluation's generate (1: greedy).")
    group.add_argument("--generation_max_new_tokens", type=int, default=None,
                       help="Longest generated target (default: --max_target_length); also saved in the generation "
                            "config.")


@dataclasses.dataclass
class TrainState:
    """Where training stands; saved beside each accelerate checkpoint, so a resumed run continues exactly."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of `epoch` already consumed, per process
    tokens_seen: int = 0  # over all processes (padding of the last uneven batch included)
    train_seconds: float = 0.0  # wall time spent training, summed over resumes


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


@dataclasses.dataclass
class PreparedData:
    """The tokenized splits, the tokenizer, the config fitted to it, and figures about the data for the summary."""

    data_args: DataArgs
    processed: datasets.DatasetDict  # clm/mlm: blocks of input_ids (+ labels); seq2seq: tokenized pairs
    tokenizer: PreTrainedTokenizerBase
    config: MiniTransformerConfig
    details: dict


def main(argv: list[str] | None = None) -> torch.nn.Module:
    """Train, evaluate and save; returns the trained (unwrapped) model for in-process callers such as tests."""
    start = time.time()
    args = parse_args(argv)
    base_config, resume_path = check_args(args)
    accelerator = build_accelerator(args)
    with claim_output_dir(accelerator, args, resume_path):
        return train(args, accelerator, base_config, resume_path, start)


def train(args: argparse.Namespace, accelerator: Accelerator, base_config: MiniTransformerConfig,
          resume_path: Path | None, start: float) -> torch.nn.Module:
    """Prepare the data, train, save the model, evaluate it, and write the summary last."""
    data = prepare_data(args, accelerator, base_config, resume_path)

    set_seed(args.seed)  # before the model is built, so the seed also fixes the initial weights
    model = build_model(args, data.config)
    train_dataloader, evaluator = build_dataloaders(args, data, model)
    optimizer = build_optimizer(model, args)
    # Before `prepare` the per-process length is an estimate; it is recomputed from the sharded loader below.
    total_steps, _ = count_steps(args, math.ceil(len(train_dataloader) / accelerator.num_processes))
    # The prepared scheduler steps once per process on each optimizer step, hence the scaling.
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer,
                              num_warmup_steps=args.num_warmup_steps * accelerator.num_processes,
                              num_training_steps=total_steps * accelerator.num_processes)
    model, optimizer, train_dataloader, scheduler = accelerator.prepare(model, optimizer, train_dataloader, scheduler)
    evaluator.prepare(accelerator)
    total_steps, num_epochs = count_steps(args, len(train_dataloader))

    state = load_checkpoint(accelerator, resume_path, len(train_dataloader)) if resume_path else TrainState()
    init_trackers(accelerator, args, state)
    unit = "pairs" if args.task == "seq2seq" else f"blocks of {args.block_size} tokens"
    logger.info(f"{count_parameters(model):,} parameters; {len(data.processed['train'])} training {unit}; "
                f"{total_steps} optimizer steps over {num_epochs} epoch(s) on {accelerator.num_processes} "
                f"process(es); starting at step {state.step}.")
    loop = TrainLoop(accelerator, args, model, optimizer, scheduler, train_dataloader, evaluator, data.tokenizer,
                     total_steps)
    stopped_early = loop.run(state, num_epochs)
    # The model is saved before the evaluation, so that an evaluation error never loses it.
    save_model(accelerator, model, data.tokenizer, args)
    metrics = evaluator(accelerator, model)
    accelerator.log({f"eval_{k}": v for k, v in metrics.items()}, step=state.step)
    if accelerator.is_main_process:
        summary = build_summary(args, accelerator, data, evaluator, state, metrics, count_parameters(model),
                                time.time() - start)
        summary["planned_optimizer_steps"], summary["stopped_early"] = total_steps, stopped_early
        write_summary(Path(args.output_dir), summary)
        baselines = summary["baselines"]
        most_frequent = baselines.get("most_frequent_target")
        logger.info(f"Final eval {format_metrics(metrics)} (unigram baseline perplexity "
                    f"{baselines['unigram_perplexity']:.2f}"
                    + (f"; most frequent target {format_metrics(most_frequent)}" if most_frequent else "")
                    + f"); saved to {args.output_dir}")
    # Every rank's collectives (the DDP reducer's included) complete before any process group is torn down: a rank
    # that destroys its gloo group while work is pending can hang at exit.
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return accelerator.unwrap_model(model)


def check_args(args: argparse.Namespace) -> tuple[MiniTransformerConfig, Path | None]:
    """Every check that needs no data, before any work: returns the model config and the checkpoint to resume."""
    data_args_from(args).check()
    for name in ("block_size", "per_device_train_batch_size", "per_device_eval_batch_size",
                 "gradient_accumulation_steps", "num_train_epochs", "logging_steps", "checkpoints_total_limit",
                 "max_source_length", "max_eval_generate_samples", "generation_num_beams"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}.")
    for name in ("max_train_steps", "eval_steps", "checkpointing_steps", "max_train_seconds",
                 "generation_max_new_tokens"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise ValueError(f"--{name} must be positive when given, got {getattr(args, name)}.")
    if args.max_target_length < 2:
        raise ValueError(f"--max_target_length must be at least 2 (a token and the end-of-sequence token), got "
                         f"{args.max_target_length}.")
    check_optimization_args(args)
    tracker_names(args.report_to)  # refuses unknown or uninstalled trackers
    if args.tokenizer_name is None and args.init_from is None and not args.resume_from_checkpoint:
        minimum = 256 + len(SPECIAL_TOKENS) + (args.task == "mlm")  # byte alphabet + special tokens (+ mask)
        if args.vocab_size < minimum:
            raise ValueError(f"--vocab_size must be at least {minimum} (256 byte tokens plus the special tokens), "
                             f"got {args.vocab_size}.")
    if args.tokenizer_name is not None:
        check_tokenizer_name(args.tokenizer_name)
    config = load_base_config(args)
    if config.position_embedding_type != "rotary":  # rotary positions have no table, so no length limit
        for flag, length in sequence_lengths(args).items():
            if length > config.max_position_embeddings:
                raise ValueError(f"{flag} {length} exceeds the model's max_position_embeddings "
                                 f"{config.max_position_embeddings}; use {flag} <= {config.max_position_embeddings}.")
    resume_path = None
    if args.resume_from_checkpoint:
        resume_path = find_checkpoint(args.resume_from_checkpoint, args.output_dir)
        if args.overwrite_output_dir and resuming_in_output_dir(resume_path, args.output_dir):
            raise ValueError(f"--overwrite_output_dir would delete {str(resume_path)!r}, the checkpoint "
                             "--resume_from_checkpoint resumes from; pass one of the two.")
    return config, resume_path


def check_optimization_args(args: argparse.Namespace):
    """Numbers the optimizer, scheduler and collator would otherwise take silently or reject only after the data."""
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        raise ValueError(f"--learning_rate must be a positive number, got {args.learning_rate}.")
    for name in ("weight_decay", "max_grad_norm", "num_warmup_steps"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"--{name} must be zero or positive, got {value}.")
    for name in ("label_smoothing_factor", "adam_beta1", "adam_beta2"):
        if not 0 <= getattr(args, name) < 1:  # NaN fails this too
            raise ValueError(f"--{name} must lie in [0, 1), got {getattr(args, name)}.")
    if not (math.isfinite(args.adam_epsilon) and args.adam_epsilon > 0):
        raise ValueError(f"--adam_epsilon must be a positive number, got {args.adam_epsilon}.")
    schedulers = [scheduler.value for scheduler in SchedulerType]
    if args.lr_scheduler_type not in schedulers:
        raise ValueError(f"--lr_scheduler_type {args.lr_scheduler_type!r} is not a transformers scheduler; choose "
                         f"one of {', '.join(schedulers)}.")
    if not 0 < args.mlm_probability < 1:
        raise ValueError(f"--mlm_probability must lie in (0, 1), got {args.mlm_probability}.")
    if not 0 <= args.seed < 2**32:
        raise ValueError(f"--seed must lie in [0, 2**32), got {args.seed}.")
    if args.preprocessing_num_workers is not None and args.preprocessing_num_workers <= 0:
        raise ValueError(f"--preprocessing_num_workers must be positive when given, got "
                         f"{args.preprocessing_num_workers}.")


def check_tokenizer_name(name: str):
    """A local tokenizer folder must hold a tokenizer; anything else must at least be a valid Hub repo id."""
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            raise ValueError(f"--tokenizer_name {name!r} is not a tokenizer folder (no tokenizer.json or "
                             "tokenizer_config.json in it).")
        return
    try:
        validate_repo_id(name)
    except ValueError:
        raise ValueError(f"--tokenizer_name {name!r}: no such folder (and not a Hub repo id either).") from None
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    if offline and not isinstance(try_to_load_from_cache(name, "tokenizer_config.json"), str):
        raise ValueError(f"--tokenizer_name {name!r}: no such folder, and the Hub is offline (HF_HUB_OFFLINE) with "
                         "no cached copy of that repo.")


def resuming_in_output_dir(resume_path: Path | None, output_dir: str) -> bool:
    return resume_path is not None and resume_path.resolve().parent == (Path(output_dir) / CHECKPOINTS_DIR).resolve()


def sequence_lengths(args: argparse.Namespace) -> dict[str, int]:
    """The longest sequence each stack of the model will see, by the flag that sets it."""
    if args.task != "seq2seq":
        return {"--block_size": args.block_size}
    return {"--max_source_length": args.max_source_length, "--max_target_length": args.max_target_length,
            "--generation_max_new_tokens": max_new_tokens(args)}


def max_new_tokens(args: argparse.Namespace) -> int:
    return args.generation_max_new_tokens or args.max_target_length


def data_args_from(args: argparse.Namespace) -> DataArgs:
    # Every field of DataArgs and Seq2SeqDataArgs is the flag of the same name.
    data_class = Seq2SeqDataArgs if args.task == "seq2seq" else DataArgs
    return data_class(**{field.name: getattr(args, field.name) for field in dataclasses.fields(data_class)})


def count_steps(args: argparse.Namespace, batches_per_epoch: int) -> tuple[int, int]:
    """(total optimizer steps, epochs) when each process sees `batches_per_epoch` micro-batches per epoch."""
    # accelerate steps the optimizer at the end of every epoch, even mid-accumulation, hence the ceil.
    steps_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
    total_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    return total_steps, math.ceil(total_steps / steps_per_epoch)


def load_base_config(args: argparse.Namespace) -> MiniTransformerConfig:
    """The config from --init_from, a config.json path, or a preset name, with --config_overrides applied.

    The result is built by MiniTransformerConfig's constructor, so its checks run on every field before any work.
    """
    if args.init_from:
        if not (Path(args.init_from) / "config.json").is_file():
            raise ValueError(f"--init_from {args.init_from!r} is not a saved model folder (no config.json).")
        fields = read_config_json(Path(args.init_from) / "config.json", "--init_from")
        origin = f"--init_from {args.init_from!r}"
    elif Path(args.model_config).is_file():
        fields = read_config_json(Path(args.model_config), "--model_config")
        origin = f"--model_config {args.model_config!r}"
    elif args.model_config.endswith(".json"):
        raise ValueError(f"--model_config {args.model_config!r} does not exist.")
    else:
        config_from_preset(args.model_config)  # raises ValueError naming the presets
        fields = dict(PRESETS[args.model_config])  # the preset's own fields: derived ones follow the overrides
        origin = f"--model_config {args.model_config!r}"
    if args.config_overrides:
        fields.update(parse_config_overrides(args.config_overrides))
        origin += f" with --config_overrides {args.config_overrides!r}"
    fields["is_decoder"] = args.task == "clm"
    try:
        return MiniTransformerConfig.from_dict(fields)
    except (ValueError, StrictDataclassError) as error:
        raise ValueError(f"The model config of {origin} is invalid: {error}") from None


def read_config_json(path: Path, flag: str) -> dict:
    """The fields of a MiniTransformer config.json; a file of another model type, or not JSON, is refused."""
    try:
        fields = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{flag} {str(path)!r} is not a valid JSON file: {error}.") from None
    if not isinstance(fields, dict):
        raise ValueError(f"{flag} {str(path)!r} holds a JSON {type(fields).__name__}, not a config object.")
    model_type = fields.get("model_type", MiniTransformerConfig.model_type)
    if model_type != MiniTransformerConfig.model_type:
        raise ValueError(f"{flag} {str(path)!r} is the config of a {model_type!r} model, not "
                         f"{MiniTransformerConfig.model_type!r}.")
    return fields


def parse_config_overrides(text: str) -> dict:
    """'k=v,k=v' -> {k: v}: every key a MiniTransformerConfig field, values read as JSON (numbers, true, null) or
    else as strings."""
    known = {field.name for field in dataclasses.fields(MiniTransformerConfig)}  # with PreTrainedConfig's own
    overrides = {}
    for item in text.split(","):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise ValueError(f"--config_overrides: {item.strip()!r} is not key=value (e.g. 'num_hidden_layers=2').")
        if key not in known:
            raise ValueError(f"--config_overrides: unknown config field {key!r}; MiniTransformerConfig's fields are "
                             f"{', '.join(MiniTransformerConfig.__annotations__)}.")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = {"True": True, "False": False, "None": None}.get(value, value)
    return overrides


def find_checkpoint(value: str, output_dir: str) -> Path:
    """Resolve --resume_from_checkpoint to a verified checkpoint folder.

    'latest' is the highest-numbered complete checkpoint-N under output_dir: newer ones that fail verification are
    skipped, with a warning that names them and what is wrong. An explicit folder must pass verification.
    """
    if value == "latest":
        root = Path(output_dir) / CHECKPOINTS_DIR
        numbered = [(int(match[1]), path) for path in (root.iterdir() if root.is_dir() else [])
                    if (match := re.fullmatch(r"checkpoint-(\d+)", path.name)) and path.is_dir()]
        skipped = []
        for _, path in sorted(numbered, reverse=True):
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


def write_manifest(folder: Path):
    """List every file of `folder` with its size and sha256, into a temporary file renamed into place."""
    files = {str(path.relative_to(folder)): {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
             for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MANIFEST}
    write_text_atomically(folder / MANIFEST, json.dumps({"files": files}, indent=1))


def file_sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def warn(message: str):
    """A warning on stderr, once per run (from the first process): the loggers are not set up yet."""
    if os.environ.get("RANK", "0") == "0":
        print(f"warning: {message}", file=sys.stderr)


def build_accelerator(args: argparse.Namespace) -> Accelerator:
    # A seedable sampler and a fixed data seed make the data order a function of (seed, epoch), so that a resumed
    # run sees the same batches; see ../shared/DISTRIBUTED.md.
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=tracker_names(args.report_to) + [JsonlTracker(Path(args.output_dir) / LOG_FILE)],
        project_dir=args.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != launched:
        raise RuntimeError(
            f"The launcher started {launched} processes but accelerate sees {accelerator.num_processes}: each "
            "process would train alone on all the data. On a machine without GPUs, set ACCELERATE_USE_CPU=true "
            "(see the launch commands at the top of scripts/train.py)."
        )
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise ValueError("--mixed_precision fp16 needs a GPU (on CPU it is silently ignored); use bf16 or no.")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one INFO line per file of every checkpoint
    logger.info(accelerator.state, main_process_only=False)
    if not accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
    accelerator.wait_for_everyone()
    return accelerator


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
    if entries and not resuming_in_output_dir(resume_path, args.output_dir):
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


def prepare_data(args: argparse.Namespace, accelerator: Accelerator, base_config: MiniTransformerConfig,
                 resume_path: Path | None) -> PreparedData:
    """Load the raw splits, get the tokenizer, fit the config to it and tokenize."""
    data_args = data_args_from(args)
    # The main process downloads, trains the tokenizer and fills the datasets cache; the others then reuse them.
    with accelerator.main_process_first():
        if args.task == "seq2seq":
            raw, documents = load_seq2seq_datasets(data_args), True
            texts = itertools.chain(text_batches(raw["train"], args.source_column),
                                    text_batches(raw["train"], args.target_column))
        else:
            raw, documents = load_raw_datasets(data_args)
            texts = text_batches(raw["train"], args.text_column)
        tokenizer = load_or_train_tokenizer(args, accelerator, texts, resume_path)
        config = fit_config_to_tokenizer(args, base_config, tokenizer)
        processed, details = tokenize(args, raw, tokenizer, documents)
        details["tokenizer_size"] = len(tokenizer)  # lets show_model.py and publish.py spot a mixed folder
    logger.info(f"Data: {json.dumps(details)}")
    return PreparedData(data_args, processed, tokenizer, config, details)


def tokenize(args: argparse.Namespace, raw: datasets.DatasetDict, tokenizer: PreTrainedTokenizerBase,
             documents: bool) -> tuple[datasets.DatasetDict, dict]:
    """Blocks (clm, mlm) or tokenized pairs (seq2seq), and what the summary reports about them."""
    if args.task != "seq2seq":
        packed = tokenize_and_pack(raw, tokenizer, args.text_column, args.block_size, documents,
                                   add_labels=args.task == "clm", num_proc=args.preprocessing_num_workers)
        return packed, {"block_size": args.block_size, "train_blocks": len(packed["train"]),
                        "validation_blocks": len(packed["validation"]),
                        "validation_tokens": len(packed["validation"]) * args.block_size}
    pairs = tokenize_pairs(raw, tokenizer, args.source_column, args.target_column, args.max_source_length,
                           args.max_target_length, num_proc=args.preprocessing_num_workers)
    train_lengths = {name: [len(ids) for ids in pairs["train"][name]] for name in ("input_ids", "labels")}
    return pairs, {
        "max_source_length": args.max_source_length, "max_target_length": args.max_target_length,
        **describe_pairs(raw),
        "train_sources_truncated": sum(n == args.max_source_length for n in train_lengths["input_ids"]),
        "train_targets_truncated": sum(n == args.max_target_length for n in train_lengths["labels"]),
        "validation_target_tokens": sum(len(ids) for ids in pairs["validation"]["labels"]),
    }


def load_or_train_tokenizer(args: argparse.Namespace, accelerator: Accelerator, texts: Iterator[list[str]],
                            resume_path: Path | None) -> PreTrainedTokenizerBase:
    """--tokenizer_name, else the tokenizer of the resumed checkpoint or of --init_from, else a new byte-level BPE.

    A new tokenizer is trained once, by the main process, and saved to a working folder in --output_dir; every
    process then loads the saved files, so all ranks (and the `datasets` cache fingerprints) see the same tokenizer.
    It joins the model in --output_dir only at the final save, so a run that fails never leaves a tokenizer beside
    another run's model.
    """
    source = args.tokenizer_name
    for candidate in (resume_path, args.init_from):
        if source is None and candidate is not None and (Path(candidate) / "tokenizer_config.json").is_file():
            source = str(candidate)
    if source is None:
        source = str(Path(args.output_dir) / WORK_TOKENIZER)
        if accelerator.is_main_process:
            # The dates task validates on years never trained on: their digits must be tokens it knows.
            dates = args.task == "seq2seq" and args.embedded_task == "dates" and not (args.dataset_name or
                                                                                      args.train_file)
            tokenizer = train_bpe_tokenizer(texts, args.vocab_size, with_mask_token=args.task == "mlm",
                                            split_digits=args.split_digits or dates)
            tokenizer.save_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if args.task == "mlm" and tokenizer.mask_token is None:
        raise ValueError(f"The tokenizer from {source!r} has no mask token, which --task mlm needs.")
    return tokenizer


def fit_config_to_tokenizer(args: argparse.Namespace, config: MiniTransformerConfig,
                            tokenizer: PreTrainedTokenizerBase) -> MiniTransformerConfig:
    """A preset takes the tokenizer's vocabulary and special ids; a fixed config must already fit the tokenizer."""
    if args.init_from is None and not Path(args.model_config).is_file():
        config.vocab_size = len(tokenizer)
        config.pad_token_id, config.bos_token_id = tokenizer.pad_token_id, tokenizer.bos_token_id
        config.eos_token_id = tokenizer.eos_token_id
        # The decoder of a seq2seq model starts from bos, or, for a tokenizer without one, from pad (as T5 does).
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id
        config.decoder_start_token_id = start
    elif len(tokenizer) > config.vocab_size:
        raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
                         f"{config.vocab_size}; use a tokenizer with at most {config.vocab_size} tokens.")
    return config


def build_dataloaders(args: argparse.Namespace, data: PreparedData, model: torch.nn.Module
                      ) -> tuple[DataLoader, "Evaluator"]:
    """Shuffled training batches, and the evaluator with its in-order validation batches."""
    eval_collator = None
    if args.task == "mlm":
        # Training masks draw from the global torch RNG, which `save_state` checkpoints; evaluation has its own
        # seeded generator, reset before each evaluation so every evaluation scores the same masks.
        train_collator = DataCollatorForLanguageModeling(data.tokenizer, mlm_probability=args.mlm_probability)
        eval_collator = DataCollatorForLanguageModeling(data.tokenizer, mlm_probability=args.mlm_probability,
                                                        seed=args.seed)
    elif args.task == "seq2seq":
        # Pads each batch (labels with -100) and asks the model for decoder_input_ids: the labels shifted right.
        train_collator = DataCollatorForSeq2Seq(data.tokenizer, model=model, label_pad_token_id=-100)
    else:
        train_collator = default_data_collator
    # Rows of different lengths stay Python lists, which the seq2seq collator pads.
    splits = {name: split if args.task == "seq2seq" else split.with_format("torch")
              for name, split in data.processed.items()}
    train_dataloader = DataLoader(
        splits["train"], shuffle=True, batch_size=args.per_device_train_batch_size, collate_fn=train_collator,
        generator=torch.Generator().manual_seed(args.seed),
    )
    eval_dataloader = DataLoader(splits["validation"], batch_size=args.per_device_eval_batch_size,
                                 collate_fn=eval_collator or train_collator)
    evaluator = Evaluator(eval_dataloader, eval_collator)
    if args.task == "seq2seq":
        generate_samples = splits["validation"].select(range(min(args.max_eval_generate_samples,
                                                                 len(splits["validation"]))))
        evaluator.generate_dataloader = DataLoader(generate_samples, batch_size=args.per_device_eval_batch_size,
                                                   collate_fn=train_collator)
        evaluator.tokenizer = data.tokenizer
        evaluator.generation_kwargs = {"num_beams": args.generation_num_beams, "max_new_tokens": max_new_tokens(args),
                                       "do_sample": False}
    return train_dataloader, evaluator


def build_model(args: argparse.Namespace, config: MiniTransformerConfig) -> torch.nn.Module:
    auto_class, model_class = MODEL_CLASSES[args.task]
    if args.init_from:
        return auto_class.from_pretrained(args.init_from, config=config)
    return model_class(config)


def build_optimizer(model: torch.nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    # Decay matrices (projections, embeddings) but not biases or LayerNorm gains, as in GPT-2 and nanoGPT.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                             eps=args.adam_epsilon)


def count_parameters(model: torch.nn.Module) -> int:
    # Tied weights appear once in `parameters()`, so this is the number of distinct weights.
    return sum(p.numel() for p in model.parameters())


def init_trackers(accelerator: Accelerator, args: argparse.Namespace, state: TrainState):
    """Start the trackers; on resume, drop log lines the killed run wrote after its last checkpoint."""
    log_path = Path(args.output_dir) / LOG_FILE
    if accelerator.is_main_process and log_path.is_file():
        if state.step == 0:
            log_path.unlink()
        else:
            records = [line for line in log_path.read_text().splitlines()
                       if (json.loads(line).get("step") or 0) <= state.step]
            log_path.write_text("".join(line + "\n" for line in records))
    # Trackers such as tensorboard take scalars only.
    hparams = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in vars(args).items()}
    accelerator.init_trackers("train", config=hparams)


class TrainLoop:
    """The optimization loop: accumulate, clip, step, log, evaluate and checkpoint."""

    def __init__(self, accelerator: Accelerator, args: argparse.Namespace, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, scheduler, train_dataloader: DataLoader, evaluator: "Evaluator",
                 tokenizer: PreTrainedTokenizerBase, total_steps: int):
        self.accelerator, self.args, self.model = accelerator, args, model
        self.optimizer, self.scheduler = optimizer, scheduler
        self.train_dataloader, self.evaluator = train_dataloader, evaluator
        self.tokenizer, self.total_steps = tokenizer, total_steps
        self.label_smoother = LabelSmoother(args.label_smoothing_factor) if args.label_smoothing_factor else None

    def run(self, state: TrainState, num_epochs: int) -> bool:
        """Train until `total_steps` (or `num_epochs`); returns True if --max_train_seconds stopped it earlier."""
        accelerator, started, out_of_time = self.accelerator, time.time(), False
        progress = tqdm(total=self.total_steps, initial=state.step, desc="Training", dynamic_ncols=True,
                        disable=not accelerator.is_local_main_process)
        window = {"loss": torch.zeros((), device=accelerator.device), "batches": 0, "tokens": 0, "since": time.time()}
        train_seconds_before = state.train_seconds
        while state.step < self.total_steps and state.epoch < num_epochs and not out_of_time:
            self.model.train()
            self.train_dataloader.set_epoch(state.epoch)  # reshuffles: the order is a function of (seed, epoch)
            batches = self.train_dataloader
            if state.batches_in_epoch:  # resuming mid-epoch
                batches = accelerator.skip_first_batches(self.train_dataloader, state.batches_in_epoch)
            for batch in batches:
                grad_norm, loss = self.training_step(batch)
                tokens = batch_tokens(batch) * accelerator.num_processes
                state.batches_in_epoch += 1
                state.tokens_seen += tokens
                window["loss"] += loss
                window["batches"] += 1
                window["tokens"] += tokens
                if not accelerator.sync_gradients:
                    continue
                state.step += 1
                state.train_seconds = train_seconds_before + time.time() - started
                progress.update(1)
                self.after_optimizer_step(state, grad_norm, window, progress)
                out_of_time = self.out_of_time(started)
                if state.step >= self.total_steps or out_of_time:
                    break
            else:
                state.epoch, state.batches_in_epoch = state.epoch + 1, 0
        progress.close()
        if out_of_time:
            logger.warning(f"Stopped after {state.step} of {self.total_steps} steps: --max_train_seconds "
                           f"{self.args.max_train_seconds} reached.")
        return out_of_time

    def out_of_time(self, started: float) -> bool:
        if self.args.max_train_seconds is None:
            return False
        # Clocks differ across processes: any process out of time raises the trigger, and all of them see it.
        if time.time() - started > self.args.max_train_seconds:
            self.accelerator.set_trigger()
        return self.accelerator.check_trigger()

    def training_step(self, batch: dict) -> tuple[torch.Tensor | None, torch.Tensor]:
        """One micro-batch; returns (grad norm if the optimizer stepped, detached loss)."""
        grad_norm = None
        with self.accelerator.accumulate(self.model):
            if self.label_smoother is None:
                loss = self.model(**batch).loss
            else:
                # As transformers' Trainer does: the model gives logits only, the smoother scores them (the causal
                # LM's labels are the inputs, shifted here). Seq2seq batches carry their decoder inputs already.
                outputs = self.model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False)
                loss = self.label_smoother(outputs, batch["labels"], shift_labels=self.args.task == "clm")
            self.accelerator.backward(loss)
            if self.accelerator.sync_gradients and self.args.max_grad_norm > 0:
                grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()
        return grad_norm, loss.detach().float()

    def after_optimizer_step(self, state: TrainState, grad_norm: torch.Tensor | None, window: dict, progress: tqdm):
        args, accelerator = self.args, self.accelerator
        if state.step % args.logging_steps == 0 or state.step == self.total_steps:
            # The mean over processes is a collective: every rank reaches it on the same step.
            loss = accelerator.reduce(window["loss"], reduction="mean").item() / window["batches"]
            metrics = {"loss": loss, "lr": self.scheduler.get_last_lr()[0], "epoch": state.epoch,
                       "tokens_per_s": window["tokens"] / (time.time() - window["since"]),
                       "tokens_seen": state.tokens_seen}
            if grad_norm is not None:
                # Under FSDP2 the norm is a DTensor: full_tensor() (a collective, reached by every rank) completes it.
                grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
                metrics["grad_norm"] = grad_norm.item()
            accelerator.log(metrics, step=state.step)
            progress.set_postfix(loss=f"{loss:.3f}", lr=f"{metrics['lr']:.2e}")
            window.update(loss=torch.zeros_like(window["loss"]), batches=0, tokens=0, since=time.time())
        if args.eval_steps and state.step % args.eval_steps == 0 and state.step < self.total_steps:
            metrics = self.evaluator(accelerator, self.model)
            accelerator.log({f"eval_{k}": v for k, v in metrics.items()}, step=state.step)
            progress.write(f"step {state.step}: eval {format_metrics(metrics)}")
        # Evaluation comes first, so that a checkpoint holds the RNG state from after it.
        if args.checkpointing_steps and state.step % args.checkpointing_steps == 0:
            save_checkpoint(accelerator, args, state, self.tokenizer)


def batch_tokens(batch: dict) -> int:
    """Tokens a batch feeds the model, padding included: the (source) input_ids, plus the decoder inputs if any."""
    return sum(batch[name].numel() for name in ("input_ids", "decoder_input_ids") if name in batch)


@dataclasses.dataclass
class Evaluator:
    """Held-out token loss and perplexity; for seq2seq also BLEU, chrF and exact match of generated targets."""

    eval_dataloader: DataLoader
    eval_collator: DataCollatorForLanguageModeling | None = None  # masked LM: reseeded before every evaluation
    generate_dataloader: DataLoader | None = None  # seq2seq: the first --max_eval_generate_samples pairs
    tokenizer: PreTrainedTokenizerBase | None = None
    generation_kwargs: dict = dataclasses.field(default_factory=dict)
    generated: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # last (reference, prediction)s

    def prepare(self, accelerator: Accelerator):
        """Shard the validation loaders across processes (after the training loader, so checkpoints line up)."""
        self.eval_dataloader = accelerator.prepare(self.eval_dataloader)
        if self.generate_dataloader is not None:
            self.generate_dataloader = accelerator.prepare(self.generate_dataloader)

    def __call__(self, accelerator: Accelerator, model: torch.nn.Module) -> dict[str, float]:
        model.eval()
        if self.eval_collator is not None:
            self.eval_collator.create_rng("pt")  # the same masks at every evaluation
        metrics = evaluate_loss(accelerator, model, self.eval_dataloader)
        if self.generate_dataloader is not None:
            predictions, references = generate_targets(accelerator, model, self.generate_dataloader, self.tokenizer,
                                                        self.generation_kwargs)
            metrics.update(sequence_scores(predictions, references))
            self.generated = list(zip(references, predictions))
        model.train()
        return metrics


def evaluate_loss(accelerator: Accelerator, model: torch.nn.Module, eval_dataloader: DataLoader
                  ) -> dict[str, float]:
    """Mean loss per scored token over the validation data (each sample counted once) and its exponential."""
    totals = []
    for batch in eval_dataloader:
        with torch.no_grad():
            loss = model(**batch).loss.detach().float()
        # The loss is a mean over the batch's scored tokens (labels != -100), so it is weighted by their number.
        # (The causal loss scores one fewer per block, as it shifts; every block loses one, so the weights keep
        # their proportions.) Weights go per sample, so that gather_for_metrics can drop the samples repeated to
        # even out the last batch across processes.
        tokens = (batch["labels"] != -100).sum(dim=-1).float()
        # A batch with nothing to score has an undefined (NaN) mean loss; it adds nothing to the totals.
        weighted = torch.where(tokens > 0, loss * tokens, torch.zeros_like(tokens))
        totals.append(accelerator.gather_for_metrics(torch.stack([weighted, tokens], dim=-1)))
    loss_sum, token_count = torch.cat(totals).sum(dim=0).tolist()
    if token_count == 0:
        logger.warning("The evaluation scored no token (every label is -100, e.g. a tiny --mlm_probability): its "
                       "loss and perplexity are undefined.")
        return {"loss": float("nan"), "perplexity": float("nan")}
    eval_loss = loss_sum / token_count
    return {"loss": eval_loss, "perplexity": math.exp(eval_loss) if eval_loss < 100 else float("inf")}


def generate_targets(accelerator: Accelerator, model: torch.nn.Module, dataloader: DataLoader,
                     tokenizer: PreTrainedTokenizerBase, generation_kwargs: dict) -> tuple[list[str], list[str]]:
    """Generated targets and references (the labels) of `dataloader`'s pairs, decoded, in order, on every process."""
    generator = accelerator.unwrap_model(model)
    predictions, references = [], []
    for batch in dataloader:
        with torch.no_grad():
            generated = generator.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                           **generation_kwargs)
        # Each process stops at its own longest output and pads labels to its own longest target: pad to the
        # longest over processes, so that the gather can concatenate.
        generated = accelerator.pad_across_processes(generated, dim=1, pad_index=tokenizer.pad_token_id)
        labels = accelerator.pad_across_processes(batch["labels"], dim=1, pad_index=-100)
        generated, labels = accelerator.gather_for_metrics((generated, labels))
        predictions += tokenizer.batch_decode(generated, skip_special_tokens=True)
        references += tokenizer.batch_decode(labels.masked_fill(labels == -100, tokenizer.pad_token_id),
                                             skip_special_tokens=True)
    return [text.strip() for text in predictions], [text.strip() for text in references]


def sequence_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu, 0-100) and the exact-match rate (0-1) of predictions against references."""
    return {
        "bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
        "chrf": sacrebleu.corpus_chrf(predictions, [references]).score,
        "exact_match": sum(p == r for p, r in zip(predictions, references, strict=True)) / len(references),
    }


METRIC_FORMATS = {"loss": "loss {:.4f}", "perplexity": "perplexity {:.2f}", "bleu": "BLEU {:.2f}",
                  "chrf": "chrF {:.2f}", "exact_match": "exact match {:.3f}"}


def format_metrics(metrics: dict) -> str:
    return ", ".join(text.format(metrics[name]) for name, text in METRIC_FORMATS.items() if name in metrics)


def save_checkpoint(accelerator: Accelerator, args: argparse.Namespace, state: TrainState,
                    tokenizer: PreTrainedTokenizerBase):
    """`save_state` into a temporary folder renamed when complete: a checkpoint-N folder is never half-written, and
    its manifest (sizes and sha256 of every file) lets a resume detect a file damaged since."""
    root = Path(args.output_dir) / CHECKPOINTS_DIR
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
        done = sorted((p for p in root.glob("checkpoint-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
        for old in done[: -args.checkpoints_total_limit]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def load_checkpoint(accelerator: Accelerator, path: Path, batches_per_epoch: int) -> TrainState:
    accelerator.load_state(str(path))
    state = TrainState(**json.loads((path / TRAINER_STATE).read_text()))
    if state.batches_in_epoch >= batches_per_epoch:  # the checkpoint closed its epoch
        state.epoch, state.batches_in_epoch = state.epoch + 1, 0
    logger.info(f"Resumed from {path} at step {state.step} (epoch {state.epoch}, batch {state.batches_in_epoch}).")
    return state


def save_model(accelerator: Accelerator, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
               args: argparse.Namespace):
    """Safetensors weights, config (with auto_map and code), generation config and tokenizer.

    An earlier summary goes first: the summary, written last, vouches that the folder's files are from one run.
    """
    if accelerator.is_main_process:
        (Path(args.output_dir) / SUMMARY_FILE).unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    # Under FSDP this gathers the full state dict; every rank takes part.
    state_dict = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    if unwrapped.can_generate():
        generation_config = unwrapped.generation_config
        generation_config.pad_token_id = tokenizer.pad_token_id
        generation_config.bos_token_id = tokenizer.bos_token_id
        generation_config.eos_token_id = tokenizer.eos_token_id
        if unwrapped.config.is_encoder_decoder:
            generation_config.decoder_start_token_id = unwrapped.config.decoder_start_token_id
            # Without it `generate` stops at 20 tokens (max_length), shorter than the targets it was trained on.
            generation_config.max_new_tokens = max_new_tokens(args)
    unwrapped.save_pretrained(args.output_dir, is_main_process=accelerator.is_main_process,
                              save_function=accelerator.save, state_dict=state_dict)
    if accelerator.is_main_process:
        tokenizer.save_pretrained(args.output_dir)
        shutil.rmtree(Path(args.output_dir) / WORK_TOKENIZER, ignore_errors=True)
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


def unigram_perplexity(processed: datasets.DatasetDict, column: str, vocab_size: int) -> float:
    """Perplexity on the validation tokens of `column` of the context-free baseline: training-set token frequencies
    (add-one)."""

    def token_ids(split: datasets.Dataset) -> Iterator[torch.Tensor]:
        for batch in split.iter(batch_size=4096):
            yield torch.tensor(list(itertools.chain.from_iterable(batch[column])), dtype=torch.long)

    counts = torch.ones(vocab_size, dtype=torch.float64)
    for ids in token_ids(processed["train"]):
        counts += torch.bincount(ids, minlength=vocab_size).double()
    log_probs = (counts / counts.sum()).log()
    validation = torch.cat(list(token_ids(processed["validation"])))
    return math.exp(-log_probs[validation].mean().item())


def most_frequent_target(data: PreparedData, num_samples: int) -> dict:
    """The metric baseline of seq2seq: always answer the most frequent training target, scored like generation."""
    ids, count = Counter(map(tuple, data.processed["train"]["labels"])).most_common(1)[0]
    prediction = data.tokenizer.decode(ids, skip_special_tokens=True).strip()
    validation = data.processed["validation"]
    labels = list(validation.select(range(min(num_samples, len(validation))))["labels"])
    references = [text.strip() for text in data.tokenizer.batch_decode(labels, skip_special_tokens=True)]
    return {"prediction": prediction, "train_count": count,
            **sequence_scores([prediction] * len(references), references)}


def build_summary(args: argparse.Namespace, accelerator: Accelerator, data: PreparedData, evaluator: Evaluator,
                  state: TrainState, metrics: dict, num_parameters: int, wall_seconds: float) -> dict:
    seq2seq = args.task == "seq2seq"
    baselines = {"unigram_perplexity": unigram_perplexity(data.processed, "labels" if seq2seq else "input_ids",
                                                          data.config.vocab_size),
                 "uniform_perplexity": float(data.config.vocab_size)}
    summary = {"task": args.task, "final_eval": metrics, "baselines": baselines}
    if seq2seq:
        baselines["most_frequent_target"] = most_frequent_target(data, args.max_eval_generate_samples)
        summary["generation"] = {**evaluator.generation_kwargs, "samples": len(evaluator.generated),
                                 "examples": [{"reference": r, "prediction": p} for r, p in evaluator.generated[:10]]}
    return {
        **summary,
        "optimizer_steps": state.step,
        "tokens_seen": state.tokens_seen,
        "train_wall_seconds": state.train_seconds,
        "total_wall_seconds_last_run": wall_seconds,
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "num_parameters": num_parameters,
        "data": {**data.data_args.describe(), **data.details},
        "config": data.config.to_dict(),
        "args": vars(args),
    }


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:  # bad input: a message naming the value, not a traceback
        raise SystemExit(f"error: {error}") from None
