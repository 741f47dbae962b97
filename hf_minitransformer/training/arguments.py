"""The flags of scripts/train.py as typed groups, and every check that can run before any work: a bad value is a
ValueError that names it and what is allowed, raised before data is loaded or a process group waits.

Each group is a dataclass that checks its own values in `__post_init__`; transformers' `HfArgumentParser` turns the
fields into flags (a `Literal` field into a flag with choices), and `check_args` checks what spans groups. A run can
also start from a YAML or JSON file of arguments (`train.py run.yaml --output_dir x`: flags after the file win).
"""

import dataclasses
import importlib.util
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import torch
import yaml
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import StrictDataclassError
from huggingface_hub.utils import validate_repo_id
from transformers import HfArgumentParser, SchedulerType

from ..configuration_minitransformer import MiniTransformerConfig
from ..data import EMBEDDED_SEQ2SEQ_TASKS, SPECIAL_TOKENS
from ..presets import PRESETS, config_from_preset
from .checkpointing import TRAINER_STATE, find_checkpoint, is_in_checkpoints_of, read_run_args, saved_data_states
from .preparation import FITTED_TO_TOKENIZER, builds_from_preset
from .tasks import TASKS, Task, task_of_config
from .tracking import tracker_names, warn


DESCRIPTION = "Train a MiniTransformer with accelerate: causal LM (default), masked LM, or encoder-decoder (seq2seq)."
# What a resumed run may change: how long it goes on, and how it reports, evaluates and checkpoints on the way. Every
# other flag shapes the weights (model, data, tokenizer, batches, optimizer, seed, precision) and must be the
# checkpoint's, or the run would mix two trainings. A new length also stretches the remaining schedule.
RESUMABLE_CHANGES = ("max_train_steps", "num_train_epochs", "max_train_seconds", "logging_steps", "eval_steps",
                     "checkpointing_steps", "checkpoints_total_limit", "report_to", "per_device_eval_batch_size",
                     "max_eval_generate_samples", "generation_num_beams", "generation_max_new_tokens",
                     "generation_length_penalty", "generation_max_length_offset", "preprocessing_num_workers",
                     "average_last_checkpoints")
NOT_COMPARED_ON_RESUME = ("resume_from_checkpoint", "output_dir", "overwrite_output_dir")  # where, not what
# The flags of --streaming, with their values when a streamed run does not give them (without --streaming, none may
# be given).
STREAMING_DEFAULTS = {"shuffle_buffer_size": 10_000, "validation_samples": 1_000, "tokenizer_train_samples": 100_000}
# Flags of a run over an in-memory dataset that a stream cannot honour: it has no known length to count epochs or
# percentages in.
NOT_FOR_STREAMS = ("num_train_epochs", "validation_split_percentage")
# --recipe: the defaults of the optimization flags. "paper" is Vaswani et al. §5.3-5.4: Adam (no weight decay) with
# beta2 0.98 and eps 1e-9, linear warmup then learning rate ~ 1/sqrt(step), and label smoothing 0.1.
RECIPES = {
    "default": {},
    "paper": {"label_smoothing_factor": 0.1, "adam_beta1": 0.9, "adam_beta2": 0.98, "adam_epsilon": 1e-9,
              "weight_decay": 0.0, "lr_scheduler_type": "inverse_sqrt",
              # §6.1: "beam search with a beam size of 4 and length penalty alpha = 0.6 ... maximum output length
              # during inference to input length + 50, but terminate early when possible"
              "generation_num_beams": 4, "generation_length_penalty": 0.6, "generation_max_length_offset": 50},
}


def flag(default, help: str):
    """A dataclass field that is a flag of train.py: its default and its --help text."""
    return field(default=default, metadata={"help": help})


def check_positive(group, *names: str, optional: bool = False):
    """Each named field of `group` must be a positive number (or, `optional`, None); NaN and infinity are refused."""
    for name in names:
        value = getattr(group, name)
        if optional and value is None:
            continue
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"--{name} must be positive{' when given' if optional else ''}, got {value}.")


@dataclass
class ModelArguments:
    """Which model is trained: the task's head, built from a preset or a config.json, or continued from a folder."""

    _argument_group_name = "model"

    task: Literal["clm", "mlm", "seq2seq"] = flag(
        "clm", "clm: causal (next-token) LM, MiniTransformerForCausalLM; mlm: masked LM, MiniTransformerForMaskedLM; "
               "seq2seq: encoder-decoder from source to target text, MiniTransformerForSeq2SeqLM.")
    model_config: str = flag("small", f"A preset name ({', '.join(PRESETS)}) or the path of a config.json (from "
                                      "scratch).")
    config_overrides: str | None = flag(None, "Comma-separated config fields to override, e.g. "
                                              "'hidden_dropout_prob=0.0,num_hidden_layers=2'.")
    init_from: str | None = flag(None, "A saved model folder to continue training from, instead of --model_config.")


@dataclass
class DataArguments:
    """Where the text or the pairs come from, the tokenizer, and how examples are cut (blocks or source/target)."""

    _argument_group_name = "data and tokenizer"

    dataset_name: str | None = flag(None, "A dataset on the Hugging Face Hub (needs a connection).")
    dataset_config_name: str | None = flag(None, "The configuration of --dataset_name.")
    train_file: str | None = flag(None, "Training data: .txt/.text/.md, .json/.jsonl, .csv or .parquet.")
    validation_file: str | None = flag(None, "Validation data, same format as --train_file. Without it, part of the "
                                             "data is held out.")
    text_column: str = flag("text", "The column holding the text in json/csv/parquet data.")
    validation_split_percentage: float = flag(5.0, "Percentage of the data held out for validation when there is no "
                                                   "validation split.")
    validation_split_name: str = flag("validation", "The split of --dataset_name that evaluation scores (e.g. "
                                                    "'test': newstest2014 of wmt14 de-en).")
    max_corpus_bytes: int = flag(4_000_000, "Size cap of the embedded corpus (used when no dataset or file is "
                                            "given).")
    block_size: int = flag(128, "Tokens per training sequence (packed).")
    preprocessing_num_workers: int | None = flag(
        None, "Processes for tokenizing (Dataset.map num_proc). With --streaming: DataLoader workers that tokenize "
              "and batch the stream as training goes, each reading whole shards (files) of its process's share, so "
              "at most as many as a share has shards (checked).")
    streaming: bool = flag(False, "Read --dataset_name or --train_file as a stream (datasets' IterableDataset): "
                                  "tokenized on the fly, split over the processes, never loaded whole. Needs "
                                  "--max_train_steps; batches come from a shuffle buffer (--shuffle_buffer_size), "
                                  "validation from --validation_samples held-out rows, a new tokenizer from "
                                  "--tokenizer_train_samples rows.")
    shuffle_buffer_size: int | None = flag(
        None, "With --streaming: examples read into each buffer, which is shuffled, cut into batches (grouped by "
              "length with --max_tokens_per_batch) and yielded in shuffled order; examples mix only within a buffer. "
              f"Default {STREAMING_DEFAULTS['shuffle_buffer_size']}.")
    validation_samples: int | None = flag(
        None, "With --streaming: the held-out rows, the first N of the validation split (--validation_file or the "
              "dataset's), or, without one, of the training stream, which training then never sees (nor any row "
              f"equal to one of them). Default {STREAMING_DEFAULTS['validation_samples']}.")
    tokenizer_train_samples: int | None = flag(
        None, "With --streaming: a new tokenizer is trained on the first N training rows (sources and targets "
              "together for seq2seq), which also give the summary's baselines. Default "
              f"{STREAMING_DEFAULTS['tokenizer_train_samples']}.")
    tokenizer_name: str | None = flag(
        None, "A saved tokenizer folder (or Hub id). Default: train a byte-level BPE on the training data, sources "
              "and targets for seq2seq (or reuse the tokenizer of --init_from / of the resumed checkpoint).")
    vocab_size: int = flag(4096, "Vocabulary size of the trained BPE tokenizer.")
    split_digits: bool = flag(False, "The trained BPE tokenizer keeps every digit a token of its own (numbers never "
                                     "seen in training are spelled with known tokens); always on for --embedded_task "
                                     "dates.")
    # --task seq2seq
    source_column: str = flag("source", "seq2seq: the column holding the source (input) text; a field of a struct "
                                        "column by its dotted name, e.g. translation.en.")
    target_column: str = flag("target", "seq2seq: the column holding the target (output) text, e.g. "
                                        "translation.de.")
    embedded_task: Literal["docstrings", "dates"] | None = flag(
        None, "seq2seq: the pairs used without --dataset_name or --train_file: docstrings (the default: a "
              "standard-library function's code -> its docstring's first line) or dates (a date in one of 19 human "
              "formats -> ISO 8601, validated on years never trained on).")
    max_source_length: int = flag(256, "seq2seq: source tokens kept (truncated after).")
    max_target_length: int = flag(32, "seq2seq: target tokens kept, the closing end-of-sequence token included.")

    def __post_init__(self):
        check_positive(self, "block_size", "max_source_length")
        check_positive(self, "preprocessing_num_workers", optional=True)
        if self.max_target_length < 2:
            raise ValueError(f"--max_target_length must be at least 2 (a token and the end-of-sequence token), got "
                             f"{self.max_target_length}.")
        # --streaming's own flags: given only with it, their defaults filled in.
        for name, default in STREAMING_DEFAULTS.items():
            if not self.streaming and getattr(self, name) is not None:
                raise ValueError(f"--{name} {getattr(self, name)} applies to --streaming runs only; add --streaming "
                                 "or drop it.")
            if self.streaming and getattr(self, name) is None:
                setattr(self, name, default)
            elif self.streaming:
                check_positive(self, name)


@dataclass
class OptimizationArguments:
    """Batches, optimizer, schedule, loss, precision and seed: with the data, what the weights are a function of."""

    _argument_group_name = "optimization"

    per_device_train_batch_size: int = flag(16, "Sequences per device per step.")
    max_tokens_per_batch: int | None = flag(
        None, "Token-budget batches (fairseq's --max-tokens; the paper's ~25000 tokens): examples grouped by length, "
              "at most N tokens per batch per process, padding counted (a batch of n examples costs n x its "
              "longest; a pair counts its longer side). Replaces --per_device_train_batch_size.")
    gradient_accumulation_steps: int = flag(1, "Micro-batches accumulated into one optimizer step.")
    learning_rate: float = flag(1e-3, "Peak learning rate of AdamW.")
    weight_decay: float = flag(0.1, "AdamW weight decay, applied to matrices only (not biases or LayerNorm).")
    max_grad_norm: float = flag(1.0, "Gradient clipping norm (0: no clipping).")
    num_train_epochs: int = flag(2, "Passes over the training data.")
    max_train_steps: int | None = flag(None, "Total optimizer steps; overrides --num_train_epochs when given.")
    max_train_seconds: float | None = flag(
        None, "Safety limit: stop (then evaluate and save) after this much training time, even before the last "
              "step; the summary records it. Counted per launch, not over resumes.")
    lr_scheduler_type: str = flag("cosine", "Any transformers scheduler name (linear, cosine, constant_with_warmup, "
                                            "...).")
    num_warmup_steps: int = flag(50, "Linear warmup steps of the scheduler.")
    recipe: Literal["default", "paper"] = flag(
        "default", "paper: the training recipe of Vaswani et al. (label smoothing 0.1, Adam betas (0.9, 0.98), eps "
                   "1e-9, no weight decay, inverse_sqrt schedule after --num_warmup_steps); flags given explicitly "
                   "override it.")
    label_smoothing_factor: float = flag(0.0, "Label smoothing of the training loss (transformers' LabelSmoother; "
                                              "the paper uses 0.1). The evaluation loss stays plain cross-entropy.")
    adam_beta1: float = flag(0.9, "AdamW beta1.")
    adam_beta2: float = flag(0.95, "AdamW beta2 (the paper: 0.98).")
    adam_epsilon: float = flag(1e-8, "AdamW epsilon (the paper: 1e-9).")
    mlm_probability: float = flag(0.15, "Fraction of tokens masked (mlm task).")
    mixed_precision: Literal["no", "fp16", "bf16"] | None = flag(
        None, "Override the launcher's mixed precision; bf16 works on CPU, fp16 needs a GPU.")
    seed: int = flag(42, "Seed of weights, data order, masking and dropout.")

    def __post_init__(self):
        # Numbers the optimizer, scheduler and collator would otherwise take silently or reject only after the data.
        check_positive(self, "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs")
        check_positive(self, "max_train_steps", "max_train_seconds", "max_tokens_per_batch", optional=True)
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"--learning_rate must be a positive number, got {self.learning_rate}.")
        for name in ("weight_decay", "max_grad_norm", "num_warmup_steps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"--{name} must be zero or positive, got {value}.")
        for name in ("label_smoothing_factor", "adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:  # NaN fails this too
                raise ValueError(f"--{name} must lie in [0, 1), got {getattr(self, name)}.")
        if not (math.isfinite(self.adam_epsilon) and self.adam_epsilon > 0):
            raise ValueError(f"--adam_epsilon must be a positive number, got {self.adam_epsilon}.")
        schedulers = [scheduler.value for scheduler in SchedulerType]
        if self.lr_scheduler_type not in schedulers:
            raise ValueError(f"--lr_scheduler_type {self.lr_scheduler_type!r} is not a transformers scheduler; "
                             f"choose one of {', '.join(schedulers)}.")
        if not 0 < self.mlm_probability < 1:
            raise ValueError(f"--mlm_probability must lie in (0, 1), got {self.mlm_probability}.")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"--seed must lie in [0, 2**32), got {self.seed}.")


@dataclass
class OutputArguments:
    """Where the run writes, and how it logs, checkpoints, resumes and averages on the way."""

    _argument_group_name = "logging, checkpoints and output"

    output_dir: str = flag("outputs/minitransformer", "Where everything is written.")
    overwrite_output_dir: bool = flag(
        False, "Replace the files of an earlier run in --output_dir (without it, a folder that holds files is "
               "refused unless --resume_from_checkpoint continues the run in it).")
    logging_steps: int = flag(10, "Log training metrics every N steps.")
    eval_steps: int | None = flag(None, "Evaluate every N steps (default: at the end only).")
    checkpointing_steps: int | None = flag(None, "Save a resumable checkpoint every N optimizer steps (default: "
                                                 "none).")
    checkpoints_total_limit: int = flag(2, "Keep only the last K checkpoints.")
    average_last_checkpoints: int | None = flag(
        None, "After training, also write the element-wise mean of the weights of the last K checkpoints to "
              "OUTPUT_DIR/averaged (fairseq's average_checkpoints.py; the paper averages the last 5) and evaluate "
              "it as the final model; the summary records both. Needs --checkpointing_steps and "
              "--checkpoints_total_limit >= K.")
    resume_from_checkpoint: str | None = flag(None, "A checkpoint folder, or 'latest' for the newest one in "
                                                    "--output_dir/checkpoints.")
    report_to: str = flag("auto", "Accelerate tracker(s) besides the JSON-lines log: 'auto' (tensorboard if "
                                  "installed), 'none', or names such as 'tensorboard,wandb'.")

    def __post_init__(self):
        check_positive(self, "logging_steps", "checkpoints_total_limit")
        check_positive(self, "eval_steps", "checkpointing_steps", optional=True)
        tracker_names(self.report_to)  # refuses unknown or uninstalled trackers
        if self.average_last_checkpoints is not None:
            check_average_last_checkpoints(self)


@dataclass
class EvaluationArguments:
    """How the run is scored: evaluation batches and, for seq2seq, how targets are generated (also saved in the
    model's generation config)."""

    _argument_group_name = "evaluation and generation"

    per_device_eval_batch_size: int = flag(32, "Sequences per device in eval.")
    max_eval_generate_samples: int = flag(200, "seq2seq: evaluation generates the targets of this many validation "
                                               "pairs (the first ones) and scores them with BLEU, chrF and exact "
                                               "match.")
    generation_num_beams: int = flag(1, "seq2seq: beams of the evaluation's generate (1: greedy).")
    generation_max_new_tokens: int | None = flag(
        None, "seq2seq: longest generated target (default: --max_target_length, or the longest source plus "
              "--generation_max_length_offset); also saved in the generation config.")
    generation_length_penalty: float = flag(1.0, "seq2seq: beam search's length penalty alpha (scores divided by "
                                                 "length**alpha; the paper: 0.6).")
    generation_max_length_offset: int | None = flag(
        None, "seq2seq: each generated target stops at its source's length plus this many tokens (the paper: 50, "
              "'but terminate early when possible').")

    def __post_init__(self):
        check_positive(self, "per_device_eval_batch_size", "max_eval_generate_samples", "generation_num_beams")
        check_positive(self, "generation_max_new_tokens", "generation_max_length_offset", optional=True)
        if not math.isfinite(self.generation_length_penalty):
            raise ValueError(f"--generation_length_penalty must be a number, got {self.generation_length_penalty}.")


GROUPS = (ModelArguments, DataArguments, OptimizationArguments, OutputArguments, EvaluationArguments)


class TrainArguments(NamedTuple):
    """train.py's arguments, one typed group each; a function is handed the groups it reads, not this tuple."""

    model: ModelArguments
    data: DataArguments
    optimization: OptimizationArguments
    output: OutputArguments
    evaluation: EvaluationArguments

    def flat(self) -> dict:
        """Every argument by its flag's name: training_summary.json's "args" and a checkpoint's run_args.json."""
        return {name: value for group in self for name, value in dataclasses.asdict(group).items()}


def parse_args(argv: list[str] | None = None) -> TrainArguments:
    """train.py's command line: flags, or a YAML/JSON file of arguments first and flags after it (which win).
    --recipe sets the defaults of its flags; a flag given explicitly (or in the file) still wins."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].lower().endswith((".yaml", ".yml", ".json")):
        argv = file_flags(Path(argv[0])) + argv[1:]
    parser = HfArgumentParser(GROUPS, description=DESCRIPTION)
    recipe = parser.parse_known_args(argv)[0].recipe
    parser.set_defaults(**RECIPES[recipe])
    *groups, unknown = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return TrainArguments(*groups)


def default_args(recipe: str) -> dict:
    """What `parse_args(["--recipe", recipe]).flat()` gives: every argument's default, the recipe's over the fields',
    read from the groups without parsing (or checking) anything."""
    fields = {field.name: field.default for group in GROUPS for field in dataclasses.fields(group)}
    return {**fields, **RECIPES[recipe], "recipe": recipe}


def file_flags(path: Path) -> list[str]:
    """A YAML or JSON mapping of argument names to values, as the flags that say the same (parsed, converted and
    checked as typed ones are)."""
    if not path.is_file():
        raise ValueError(f"The arguments file {str(path)!r} does not exist.")
    try:
        values = yaml.safe_load(path.read_text()) if path.suffix.lower() != ".json" else json.loads(path.read_text())
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"The arguments file {str(path)!r} is not valid {path.suffix[1:].upper()}: "
                         f"{' '.join(str(error).split())}") from None
    if not isinstance(values, dict):
        raise ValueError(f"The arguments file {str(path)!r} must hold a mapping of argument names to values, not a "
                         f"{type(values).__name__}.")
    known = {field.name: field for group in GROUPS for field in dataclasses.fields(group)}
    unknown = sorted(str(name) for name in values if name not in known)
    if unknown:
        raise ValueError(f"The arguments file {str(path)!r} names no argument of train.py: {', '.join(unknown)} (its "
                         "keys are the flags of train.py --help without the leading --).")
    flags = []
    for name, value in values.items():
        if value is None or isinstance(value, dict | list):
            raise ValueError(f"The arguments file {str(path)!r}: {name} must be a single value, got {value!r} (leave "
                             "a flag out to keep its default).")
        flags += [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]
    return flags

def check_args(args: TrainArguments) -> tuple[MiniTransformerConfig, Path | None]:
    """What spans the groups (each checked its own values when it was built), before any work: returns the model
    config and the checkpoint to resume."""
    task = TASKS[args.model.task]
    resolve_embedded_task(args.data, task)
    check_streaming_run(args.data, args.optimization)
    task.data_args(args.data).check()
    longest = task.longest_example(args.data)
    if args.optimization.max_tokens_per_batch and args.optimization.max_tokens_per_batch < longest:
        raise ValueError(f"--max_tokens_per_batch {args.optimization.max_tokens_per_batch} is less than a training "
                         f"example can be long ({longest} tokens): give at least that many.")
    check_tokenizer(args.data, task, new=args.model.init_from is None and not args.output.resume_from_checkpoint)
    check_output_dir(args.output, args.model.init_from, args.data.tokenizer_name)
    if args.output.average_last_checkpoints is not None:
        check_average_last_checkpoints(args.output, args.optimization.max_train_steps)
    config = load_base_config(args.model, task)
    if config.position_embedding_type != "rotary":  # rotary positions have no table, so no length limit
        for flag_name, length in task.sequence_lengths(args.data, args.evaluation).items():
            if length > config.max_position_embeddings:
                raise ValueError(f"{flag_name} {length} exceeds the model's max_position_embeddings "
                                 f"{config.max_position_embeddings}; use {flag_name} <= "
                                 f"{config.max_position_embeddings}.")
    resume_path = None
    if args.output.resume_from_checkpoint:
        resume_path = find_checkpoint(args.output.resume_from_checkpoint, args.output.output_dir)
        if args.output.overwrite_output_dir and is_in_checkpoints_of(resume_path, args.output.output_dir):
            raise ValueError(f"--overwrite_output_dir would delete {str(resume_path)!r}, the checkpoint "
                             "--resume_from_checkpoint resumes from; pass one of the two.")
        check_resumed_args(args.flat(), read_run_args(resume_path), resume_path)
        if args.data.streaming:
            check_resumed_processes(resume_path)
    return config, resume_path


def check_streaming_run(data: DataArguments, optimization: OptimizationArguments):
    """What a stream cannot honour: it has no known length to count epochs or percentages in."""
    if not data.streaming:
        return
    if optimization.max_train_steps is None:
        raise ValueError("--streaming needs --max_train_steps: a stream has no known length, so the run is counted in "
                         "optimizer steps (each process starts a new pass over its share of the stream whenever it "
                         "ends).")
    for group in (data, optimization):
        for field_ in dataclasses.fields(group):
            if field_.name in NOT_FOR_STREAMS and getattr(group, field_.name) != field_.default:
                raise ValueError(f"--{field_.name} {getattr(group, field_.name)} needs a dataset of known length; "
                                 "with --streaming, give --max_train_steps and --validation_samples instead.")
    if importlib.util.find_spec("torchdata") is None:
        raise ValueError("--streaming needs torchdata, whose StatefulDataLoader keeps each process's place in the "
                         "stream for --resume_from_checkpoint: pip install 'hf_minitransformer[streaming]'.")


def check_tokenizer(data: DataArguments, task: Task, new: bool):
    """--tokenizer_name must name a tokenizer; a tokenizer trained here (`new`, none given) needs room for the byte
    alphabet and the special tokens."""
    if data.tokenizer_name is not None:
        check_tokenizer_name(data.tokenizer_name)
    elif new:
        minimum = 256 + len(SPECIAL_TOKENS) + task.needs_mask_token  # byte alphabet + special tokens (+ mask)
        if data.vocab_size < minimum:
            raise ValueError(f"--vocab_size must be at least {minimum} (256 byte tokens plus the special tokens), "
                             f"got {data.vocab_size}.")


def check_resumed_processes(checkpoint: Path):
    """A streamed run resumes on as many processes as saved the checkpoint: each saved its place in its own share."""
    saved, launched = saved_data_states(checkpoint), int(os.environ.get("WORLD_SIZE", "1"))
    if saved != launched:
        raise ValueError(f"--resume_from_checkpoint {str(checkpoint)!r} holds the places in the stream of {saved} "
                         f"process(es), but {launched} were launched: a streamed run resumes on as many processes as "
                         "it was saved from (each process reads its own share of the stream).")


def check_resumed_args(current: dict, saved: dict | None, checkpoint: Path):
    """A resumed run repeats the arguments (`TrainArguments.flat()`) of the run it continues, except
    RESUMABLE_CHANGES."""
    if saved is None:
        warn(f"{checkpoint} does not record the arguments it was saved with (an older checkpoint): make sure this "
             "run repeats them, or it will mix two trainings.")
        return
    resumable = resumable_changes(current["streaming"])
    changed = changed_run_args(saved, current)
    if changed:
        raise ValueError(f"--resume_from_checkpoint {str(checkpoint)!r} was saved by a run with other arguments "
                         f"({'; '.join(changed)}): resuming would mix two trainings. Repeat the checkpoint's "
                         f"values (only {', '.join('--' + name for name in resumable)} may change), "
                         "or start a new run.")
    total = current["max_train_steps"]
    step = json.loads((checkpoint / TRAINER_STATE).read_text())["step"]
    if total is not None and total < step:
        raise ValueError(f"--max_train_steps {total} is below the {step} steps {str(checkpoint)!r} has done.")


def resumable_changes(streaming: bool) -> tuple[str, ...]:
    """RESUMABLE_CHANGES, but a streamed run's workers each read their own shards: their number shapes the batches."""
    if streaming:
        return tuple(name for name in RESUMABLE_CHANGES if name != "preprocessing_num_workers")
    return RESUMABLE_CHANGES


def changed_run_args(saved: dict, current: dict) -> list[str]:
    """The arguments that shape the weights and differ between two runs, as '--name saved -> current'.

    Everything but the resumable changes and NOT_COMPARED_ON_RESUME is compared. A flag newer than the saved run
    was, when it was saved, at its default (of the saved run's recipe).
    """
    ignored = resumable_changes(current.get("streaming", False)) + NOT_COMPARED_ON_RESUME
    defaults = default_args(saved.get("recipe", "default"))
    return [f"--{name} {saved.get(name, defaults.get(name))!r} -> {value!r}" for name, value in current.items()
            if name not in ignored and saved.get(name, defaults.get(name)) != value]


def check_average_last_checkpoints(output: OutputArguments, total_steps: int | None = None):
    """--average_last_checkpoints K needs K checkpoints kept at the end: checked when the flags are parsed, then with
    the number of steps when it is known (--max_train_steps, or the steps of an epoch-based run once its data is)."""
    last = output.average_last_checkpoints
    if last < 1:
        raise ValueError(f"--average_last_checkpoints must be at least 1, got {last}.")
    if not output.checkpointing_steps:
        raise ValueError("--average_last_checkpoints averages the run's checkpoints, but the run saves none: add "
                         "--checkpointing_steps.")
    if last > output.checkpoints_total_limit:
        raise ValueError(f"--average_last_checkpoints {last} needs {last} checkpoints, but --checkpoints_total_limit "
                         f"{output.checkpoints_total_limit} keeps only the newest {output.checkpoints_total_limit}; "
                         f"raise it to at least {last}.")
    if total_steps is not None and total_steps // output.checkpointing_steps < last:
        raise ValueError(f"--average_last_checkpoints {last}: {total_steps} steps with --checkpointing_steps "
                         f"{output.checkpointing_steps} save only {total_steps // output.checkpointing_steps} "
                         "checkpoints.")


def resolve_embedded_task(data: DataArguments, task: Task):
    """--embedded_task picks the pairs a seq2seq run trains on when it is given no data: refused anywhere else (it
    would be silently ignored), and "docstrings" when a seq2seq run without data does not name one."""
    if data.embedded_task is None:
        if task.name == "seq2seq":
            data.embedded_task = EMBEDDED_SEQ2SEQ_TASKS[0]
        return
    if task.name != "seq2seq":
        raise ValueError(f"--embedded_task {data.embedded_task} is a task of --task seq2seq (source -> target "
                         f"pairs), but --task is {task.name}; add --task seq2seq.")
    if data.dataset_name or data.train_file:
        given = f"--dataset_name {data.dataset_name!r}" if data.dataset_name else f"--train_file {data.train_file!r}"
        raise ValueError(f"--embedded_task {data.embedded_task} picks the pairs used without data, but {given} "
                         "gives the data; pass one of the two.")


def check_output_dir(output: OutputArguments, init_from: str | None, tokenizer_name: str | None):
    """--output_dir must be a folder (or not exist yet), and a run never writes over what it reads: the model of
    --init_from and the tokenizer of --tokenizer_name must lie outside it (--overwrite_output_dir empties it, and the
    final save replaces its model and tokenizer files)."""
    output_dir = Path(output.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output_dir {output.output_dir!r} is a file, not a folder; pass a folder path.")
    for flag_name, value in (("--init_from", init_from), ("--tokenizer_name", tokenizer_name)):
        if value is not None and Path(value).exists() and is_within(Path(value), output_dir):
            raise ValueError(f"{flag_name} {value!r} lies in --output_dir {output.output_dir!r}, which this run "
                             "writes: its files would be replaced (or deleted by --overwrite_output_dir) by the run "
                             f"that reads them. Pass another --output_dir, or copy {value!r} elsewhere first.")


def is_within(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


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


def load_base_config(model_args: ModelArguments, task: Task) -> MiniTransformerConfig:
    """The config from --init_from, a config.json path, or a preset name, with --config_overrides applied.

    The result is built by MiniTransformerConfig's constructor, so its checks run on every field before any work.
    """
    if model_args.init_from:
        if not (Path(model_args.init_from) / "config.json").is_file():
            raise ValueError(f"--init_from {model_args.init_from!r} is not a saved model folder (no config.json).")
        fields = read_config_json(Path(model_args.init_from) / "config.json", "--init_from")
        origin = f"--init_from {model_args.init_from!r}"
    elif Path(model_args.model_config).is_file():
        fields = read_config_json(Path(model_args.model_config), "--model_config")
        origin = f"--model_config {model_args.model_config!r}"
    elif model_args.model_config.endswith(".json"):
        raise ValueError(f"--model_config {model_args.model_config!r} does not exist.")
    else:
        config_from_preset(model_args.model_config)  # raises ValueError naming the presets
        fields = dict(PRESETS[model_args.model_config])  # the preset's own fields: derived ones follow the overrides
        origin = f"--model_config {model_args.model_config!r}"
    saved_fields = dict(fields)
    if model_args.config_overrides:
        overrides = parse_config_overrides(model_args.config_overrides)
        fitted = [name for name in FITTED_TO_TOKENIZER if name in overrides]
        if fitted and builds_from_preset(model_args):
            raise ValueError(f"--config_overrides sets {', '.join(fitted)}, which the {model_args.model_config!r} "
                             "preset takes from the tokenizer (the override would be ignored); choose the tokenizer "
                             "with --tokenizer_name, or give a config.json as --model_config.")
        fields.update(overrides)
        origin += f" with --config_overrides {model_args.config_overrides!r}"
    fields["is_decoder"] = task.is_decoder
    config = config_from_fields(fields, origin)
    if model_args.init_from:
        check_init_from(model_args, task, config_from_fields(saved_fields, origin), config)
    return config


def config_from_fields(fields: dict, origin: str) -> MiniTransformerConfig:
    try:
        return MiniTransformerConfig.from_dict(fields)
    except (ValueError, StrictDataclassError) as error:
        raise ValueError(f"The model config of {origin} is invalid: {error}") from None


def check_init_from(model_args: ModelArguments, task: Task, saved: MiniTransformerConfig,
                    config: MiniTransformerConfig):
    """The weights of --init_from must load into the model this run builds: a model of the same task, and
    --config_overrides that leave every weight's shape as it is (or `from_pretrained` would start the mismatched
    weights from random values)."""
    saved_task = task_of_config(saved)
    if saved_task is not task:
        raise ValueError(f"--init_from {model_args.init_from!r} holds a {saved_task.objective} (--task "
                         f"{saved_task.name}), but --task {task.name} trains a {task.objective}: its weights would "
                         f"not load. Pass --task {saved_task.name}, or start a new model with --model_config.")
    before, after = weight_shapes(task, saved), weight_shapes(task, config)
    changed = [f"{name} {before.get(name)} -> {after.get(name)}" for name in sorted(before.keys() | after.keys())
               if before.get(name) != after.get(name)]
    if changed:
        shown = "; ".join(changed[:3]) + (f"; and {len(changed) - 3} more" if len(changed) > 3 else "")
        raise ValueError(f"--config_overrides {model_args.config_overrides!r} changes the shapes of the weights of "
                         f"--init_from {model_args.init_from!r} ({shown}): they would not load. With --init_from, "
                         "override only fields that keep every shape (dropout, for example).")


def weight_shapes(task: Task, config: MiniTransformerConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every weight of the task's model for `config`, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = task.model_class(config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


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
