"""The flags of scripts/train.py, and every check that can run before any work: a bad value is a ValueError that
names it and what is allowed, raised before data is loaded or a process group waits."""

import argparse
import dataclasses
import json
import math
import os
from pathlib import Path

from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import StrictDataclassError
from huggingface_hub.utils import validate_repo_id
from transformers import SchedulerType

from ..configuration_minitransformer import MiniTransformerConfig
from ..data import EMBEDDED_SEQ2SEQ_TASKS, SPECIAL_TOKENS
from ..presets import PRESETS, config_from_preset
from .checkpointing import find_checkpoint, is_in_checkpoints_of
from .tasks import TASKS, Task
from .tracking import tracker_names


DESCRIPTION = "Train a MiniTransformer with accelerate: causal LM (default), masked LM, or encoder-decoder (seq2seq)."
MIXED_PRECISION = ("no", "fp16", "bf16")
# --recipe: the defaults of the optimization flags. "paper" is Vaswani et al. §5.3-5.4: Adam (no weight decay) with
# beta2 0.98 and eps 1e-9, linear warmup then learning rate ~ 1/sqrt(step), and label smoothing 0.1.
RECIPES = {
    "default": {},
    "paper": {"label_smoothing_factor": 0.1, "adam_beta1": 0.9, "adam_beta2": 0.98, "adam_epsilon": 1e-9,
              "weight_decay": 0.0, "lr_scheduler_type": "inverse_sqrt"},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
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
    group.add_argument("--task", choices=tuple(TASKS), default="clm",
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


def check_args(args: argparse.Namespace) -> tuple[MiniTransformerConfig, Path | None]:
    """Every check that needs no data, before any work: returns the model config and the checkpoint to resume."""
    task = TASKS[args.task]
    task.data_args(args).check()
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
        minimum = 256 + len(SPECIAL_TOKENS) + task.needs_mask_token  # byte alphabet + special tokens (+ mask)
        if args.vocab_size < minimum:
            raise ValueError(f"--vocab_size must be at least {minimum} (256 byte tokens plus the special tokens), "
                             f"got {args.vocab_size}.")
    if args.tokenizer_name is not None:
        check_tokenizer_name(args.tokenizer_name)
    config = load_base_config(args, task)
    if config.position_embedding_type != "rotary":  # rotary positions have no table, so no length limit
        for flag, length in task.sequence_lengths(args).items():
            if length > config.max_position_embeddings:
                raise ValueError(f"{flag} {length} exceeds the model's max_position_embeddings "
                                 f"{config.max_position_embeddings}; use {flag} <= {config.max_position_embeddings}.")
    resume_path = None
    if args.resume_from_checkpoint:
        resume_path = find_checkpoint(args.resume_from_checkpoint, args.output_dir)
        if args.overwrite_output_dir and is_in_checkpoints_of(resume_path, args.output_dir):
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


def load_base_config(args: argparse.Namespace, task: Task) -> MiniTransformerConfig:
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
    fields["is_decoder"] = task.is_decoder
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
