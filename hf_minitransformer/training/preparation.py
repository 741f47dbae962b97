"""From flags to tokenized data: load the raw splits, get a tokenizer (given, reused or trained), fit the model
config to it, and tokenize. The main process goes first, so downloads, the tokenizer and the datasets cache are made
once and reused by the other ranks.

With --streaming, the training split is a stream, tokenized on the fly and split over the processes; its first
--tokenizer_train_samples rows, in memory, stand in for the training split where a whole one is read (training the
tokenizer, the baselines of the summary)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
from accelerate import Accelerator
from accelerate.logging import get_logger
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ..configuration_minitransformer import MiniTransformerConfig
from ..data import DataArgs, first_rows, train_bpe_tokenizer
from .run_folder import WORK_TOKENIZER
from .streaming import check_stream_workers, process_share, shards_per_process
from .tasks import Task


if TYPE_CHECKING:
    from .arguments import DataArguments, ModelArguments


logger = get_logger(__name__)

# What a preset takes from the tokenizer (fit_config_to_tokenizer): not for --config_overrides to choose.
FITTED_TO_TOKENIZER = ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")


@dataclasses.dataclass
class PreparedData:
    """The tokenized splits, the tokenizer, the config fitted to it, and figures about the data for the summary."""

    data_args: DataArgs
    processed: datasets.DatasetDict  # clm/mlm: blocks of input_ids (+ labels); seq2seq: tokenized pairs
    tokenizer: PreTrainedTokenizerBase
    config: MiniTransformerConfig
    details: dict
    # With --streaming: this process's share of the tokenized training stream ("train" above holds the sample).
    train_stream: datasets.IterableDataset | None = None


def prepare_data(task: Task, accelerator: Accelerator, model_args: ModelArguments, data: DataArguments,
                 output_dir: str, base_config: MiniTransformerConfig, resume_path: Path | None) -> PreparedData:
    """Load the raw splits, get the tokenizer, fit the config to it and tokenize."""
    data_args = task.data_args(data)
    with accelerator.main_process_first():
        raw, documents = task.load_raw(data_args)
        stream = None
        if data_args.streaming:
            stream = raw["train"]
            check_stream_workers(stream, data.preprocessing_num_workers, accelerator.num_processes)
            raw = datasets.DatasetDict(train=first_rows(stream, data.tokenizer_train_samples),
                                       validation=raw["validation"])
        texts = task.tokenizer_texts(data_args, raw["train"])
        tokenizer = load_or_train_tokenizer(task, accelerator, data, model_args.init_from, output_dir, texts,
                                            resume_path)
        config = fit_config_to_tokenizer(model_args, base_config, tokenizer)
        # Saved with the model: `tokenizer(text, truncation=True)` then cuts at the model's positions (a tokenizer
        # trained here knows no length and would keep 10**30 tokens).
        tokenizer.model_max_length = config.max_position_embeddings
        processed, details = task.tokenize(data, raw, tokenizer, documents)
        details["tokenizer_size"] = len(tokenizer)  # lets show_model.py and publish.py spot a mixed folder
        if stream is not None:
            details = stream_details(details, stream.num_shards, accelerator.num_processes)
            stream = process_share(task.tokenize_stream(data, stream, tokenizer, documents), accelerator)
    logger.info(f"Data: {json.dumps(details)}")
    return PreparedData(data_args, processed, tokenizer, config, details, stream)


def stream_details(details: dict, num_shards: int, num_processes: int) -> dict:
    """The summary's figures of a streamed run: those of the training split describe its sample."""
    details = {(f"train_sample_{name[len('train_'):]}" if name.startswith("train_") else name): value
               for name, value in details.items()}
    per_process = shards_per_process(num_shards, num_processes)
    details["stream"] = {"shards": num_shards, "shards_per_process": per_process,
                         "split_over_processes": "by shard" if num_shards % num_processes == 0 else "by example"}
    return details


def load_or_train_tokenizer(task: Task, accelerator: Accelerator, data: DataArguments, init_from: str | None,
                            output_dir: str, texts: Iterator[list[str]], resume_path: Path | None
                            ) -> PreTrainedTokenizerBase:
    """--tokenizer_name, else the tokenizer of the resumed checkpoint or of --init_from, else a new byte-level BPE.

    A new tokenizer is trained once, by the main process, and saved to a working folder in --output_dir; every
    process then loads the saved files, so all ranks (and the `datasets` cache fingerprints) see the same tokenizer.
    It joins the model in --output_dir only at the final save, so a run that fails never leaves a tokenizer beside
    another run's model.
    """
    source = data.tokenizer_name
    for candidate in (resume_path, init_from):
        if source is None and candidate is not None and (Path(candidate) / "tokenizer_config.json").is_file():
            source = str(candidate)
    if source is None:
        source = str(Path(output_dir) / WORK_TOKENIZER)
        if accelerator.is_main_process:
            tokenizer = train_bpe_tokenizer(texts, data.vocab_size, **task.tokenizer_options(data))
            tokenizer.save_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if task.needs_mask_token and tokenizer.mask_token is None:
        raise ValueError(f"The tokenizer from {source!r} has no mask token, which --task {task.name} needs.")
    return tokenizer


def builds_from_preset(model_args: ModelArguments) -> bool:
    """Whether the model is a new one of a --model_config preset, whose FITTED_TO_TOKENIZER fields the tokenizer sets
    (rather than the saved config of --init_from or a config.json, which the tokenizer must fit)."""
    return model_args.init_from is None and not Path(model_args.model_config).is_file()


def fit_config_to_tokenizer(model_args: ModelArguments, config: MiniTransformerConfig,
                            tokenizer: PreTrainedTokenizerBase) -> MiniTransformerConfig:
    """A preset takes the tokenizer's vocabulary and special ids; a fixed config must already fit the tokenizer."""
    if builds_from_preset(model_args):
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
