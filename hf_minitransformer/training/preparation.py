"""From flags to tokenized data: load the raw splits, get a tokenizer (given, reused or trained), fit the model
config to it, and tokenize. The main process goes first, so downloads, the tokenizer and the datasets cache are made
once and reused by the other ranks."""

import argparse
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import datasets
from accelerate import Accelerator
from accelerate.logging import get_logger
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ..configuration_minitransformer import MiniTransformerConfig
from ..data import DataArgs, train_bpe_tokenizer
from .run_folder import WORK_TOKENIZER
from .tasks import Task


logger = get_logger(__name__)


@dataclasses.dataclass
class PreparedData:
    """The tokenized splits, the tokenizer, the config fitted to it, and figures about the data for the summary."""

    data_args: DataArgs
    processed: datasets.DatasetDict  # clm/mlm: blocks of input_ids (+ labels); seq2seq: tokenized pairs
    tokenizer: PreTrainedTokenizerBase
    config: MiniTransformerConfig
    details: dict


def prepare_data(args: argparse.Namespace, task: Task, accelerator: Accelerator, base_config: MiniTransformerConfig,
                 resume_path: Path | None) -> PreparedData:
    """Load the raw splits, get the tokenizer, fit the config to it and tokenize."""
    data_args = task.data_args(args)
    with accelerator.main_process_first():
        raw, documents, texts = task.load_raw(data_args)
        tokenizer = load_or_train_tokenizer(args, task, accelerator, texts, resume_path)
        config = fit_config_to_tokenizer(args, base_config, tokenizer)
        processed, details = task.tokenize(args, raw, tokenizer, documents)
        details["tokenizer_size"] = len(tokenizer)  # lets show_model.py and publish.py spot a mixed folder
    logger.info(f"Data: {json.dumps(details)}")
    return PreparedData(data_args, processed, tokenizer, config, details)


def load_or_train_tokenizer(args: argparse.Namespace, task: Task, accelerator: Accelerator,
                            texts: Iterator[list[str]], resume_path: Path | None) -> PreTrainedTokenizerBase:
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
            tokenizer = train_bpe_tokenizer(texts, args.vocab_size, **task.tokenizer_options(args))
            tokenizer.save_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if task.needs_mask_token and tokenizer.mask_token is None:
        raise ValueError(f"The tokenizer from {source!r} has no mask token, which --task {task.name} needs.")
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
