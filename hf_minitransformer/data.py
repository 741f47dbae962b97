"""Text data for `scripts/train.py`: where the text comes from, the tokenizer, and packing into fixed-size blocks.

Three sources, checked in this order:
- a Hub dataset (`dataset_name`, needs a connection the first time; `datasets` caches it afterwards),
- local files (`train_file`, optional `validation_file`): .txt/.text/.md (one row per line), .json/.jsonl, .csv,
  .parquet (one row per record, text in `text_column`),
- the embedded corpus, which needs no download: the source of this Python's own standard library (the top-level
  `*.py` modules under `sysconfig.get_paths()["stdlib"]`, in sorted file-name order, whole files, until
  `max_corpus_bytes`). Every CPython installation ships these files (about 4.7 MB in 168 files on 3.11), so the
  corpus is real text that differs only slightly between Python versions.

Sources without a validation split get one held out: the last `validation_split_percentage` % of the rows for Hub
datasets and files (contiguous, so no block straddles the split), and, for the embedded corpus, every
`round(100 / pct)`-th file in order of size (whole modules the model never trains on, about pct % of the bytes).

With `streaming`, a Hub dataset or local files are read lazily (`load_dataset(..., streaming=True)`): the training
split is an `IterableDataset`, tokenized on the fly (`tokenize_and_pack_stream`, `tokenize_pairs_stream`). A stream has
no known length, so its held-out rows are counted, not a percentage: the first `validation_samples` rows of the
validation split, or, without one, of the training stream, whose rows equal to a held-out one are then dropped from
training (a filter on the rows themselves, which holds however the stream is later split over processes and
workers; datasets' `skip` would be divided among the shards instead).

The seq2seq task reads (source, target) pairs from the same places: two columns (`source_column`, `target_column`) of
a Hub dataset or of json/jsonl/csv/parquet files, or, with neither, the embedded task: every documented function of
the same standard-library modules, its code without the docstring -> the docstring's first line (see
`function_pairs`). Its held-out split is the embedded corpus's: the functions of whole modules never trained on,
in a fixed shuffled order. `embedded_task="dates"` picks the other embedded task instead: a date written in one of 19
human formats -> ISO 8601, validated on years never trained on (see `load_date_pairs`); its encoder-decoder has to read
the source, and its cross-attention shows which source token each output token copies.
"""

import ast
import calendar
import dataclasses
import datetime
import functools
import itertools
import platform
import random
import re
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

from datasets import Dataset, DatasetDict, IterableDataset, load_dataset, load_dataset_builder
from datasets.exceptions import DatasetGenerationError
from datasets.fingerprint import Hasher
from huggingface_hub import is_offline_mode
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast


# File suffix -> `datasets` packaged builder that reads it.
FILE_BUILDERS = {
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}
# Ids 0, 1, 2 match MiniTransformerConfig's default pad/bos/eos ids.
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}
MASK_TOKEN = "<mask>"
EMBEDDED_CORPUS = "python-stdlib-source"
EMBEDDED_TASK = "python-stdlib-docstrings"
EMBEDDED_SEQ2SEQ_TASKS = ("docstrings", "dates")  # the values of --embedded_task


@dataclasses.dataclass
class DataArgs:
    """Where the training text comes from; stored in `training_summary.json` so the split can be rebuilt later."""

    embedded_name: ClassVar[str] = EMBEDDED_CORPUS

    dataset_name: str | None = None
    dataset_config_name: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    text_column: str = "text"
    validation_split_percentage: float = 5.0
    validation_split_name: str = "validation"  # the split of a Hub dataset held out for evaluation (WMT14: "test")
    max_corpus_bytes: int = 4_000_000
    streaming: bool = False  # read the training split lazily, as an IterableDataset
    validation_samples: int | None = None  # with streaming: the rows held out for validation

    def check(self):
        """Raise ValueError for inputs that would fail later, before any work starts."""
        if self.streaming and not (self.dataset_name or self.train_file):
            raise ValueError("--streaming reads a --dataset_name or a --train_file; the embedded data is built in "
                             "memory (drop --streaming, or give data).")
        if self.validation_samples is not None and not self.streaming:
            raise ValueError(f"--validation_samples {self.validation_samples} counts the held-out rows of a "
                             "--streaming run; without --streaming, --validation_split_percentage holds out a share "
                             "of the rows.")
        if self.streaming and not (self.validation_samples or 0) > 0:
            raise ValueError(f"--validation_samples must be positive, got {self.validation_samples}.")
        if self.dataset_name and self.train_file:
            raise ValueError(f"Pass --dataset_name or --train_file, not both (got {self.dataset_name!r} and "
                             f"{self.train_file!r}).")
        if self.validation_file and not self.train_file:
            raise ValueError(f"--validation_file {self.validation_file!r} needs a --train_file as well.")
        if self.dataset_name:
            check_dataset_available(self.dataset_name, self.dataset_config_name)
        for role, path in (("train", self.train_file), ("validation", self.validation_file)):
            if path is not None:
                check_data_file(path, role)
        if self.train_file and self.validation_file:
            train_builder = FILE_BUILDERS[Path(self.train_file).suffix.lower()]
            validation_builder = FILE_BUILDERS[Path(self.validation_file).suffix.lower()]
            if train_builder != validation_builder:
                raise ValueError(f"--train_file and --validation_file must have the same format, got "
                                 f"{train_builder!r} and {validation_builder!r} files.")
        if self.validation_split_name != "validation" and not self.dataset_name:
            raise ValueError(f"--validation_split_name {self.validation_split_name!r} picks a split of a "
                             "--dataset_name; local files and the embedded data have train and validation only.")
        if not 0 < self.validation_split_percentage < 100:
            raise ValueError(f"--validation_split_percentage must lie in (0, 100), got "
                             f"{self.validation_split_percentage}.")
        if self.max_corpus_bytes <= 0:
            raise ValueError(f"--max_corpus_bytes must be positive, got {self.max_corpus_bytes}.")

    def describe(self) -> dict:
        """A JSON-serialisable description of the data, for the training summary and the model card.

        "source" is portable, as a published card needs it: corpus and file names, never a local absolute path (the
        paths stay in "args", from which `scripts/show_model.py` rebuilds the validation split on this machine).
        """
        if self.dataset_name:
            local = Path(self.dataset_name).exists()
            name = Path(self.dataset_name).name if local else self.dataset_name
            source = f"{'local dataset folder' if local else 'dataset'} {name}" + (
                f" ({self.dataset_config_name})" if self.dataset_config_name else "")
        elif self.train_file:
            source = f"local file {Path(self.train_file).name}" + (
                f" (validation: {Path(self.validation_file).name})" if self.validation_file else "")
        else:
            files = embedded_corpus_files(self.max_corpus_bytes)
            source = (f"{self.embedded_name}: {len(files)} top-level modules of the Python "
                      f"{platform.python_version()} standard library, "
                      f"{sum(Path(f).stat().st_size for f in files)} bytes")
        if self.streaming:
            source += f", streamed (validation: {self.validation_samples} held-out rows)"
        return {"source": source, "args": dataclasses.asdict(self)}


def check_dataset_available(name: str, config_name: str | None):
    """A Hub dataset (or local dataset folder) must be reachable, or cached when the Hub is offline: asking for its
    builder reads only its metadata, so a wrong name fails here rather than after the run has started."""
    try:
        load_dataset_builder(name, config_name)
    except (OSError, ValueError) as error:  # ConnectionError, DatasetNotFoundError, an unknown config name
        hint = ""
        if is_offline_mode():
            hint = (" The Hub is offline (HF_HUB_OFFLINE) and no copy of it is cached: unset HF_HUB_OFFLINE to "
                    "download it, or pass local files with --train_file.")
        config = f" (config {config_name!r})" if config_name else ""
        raise ValueError(f"--dataset_name {name!r}{config} cannot be loaded: {error}{hint}") from None


def check_data_file(path: str, role: str):
    """A data file must exist, be non-empty and have a suffix that `datasets` can read."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"The {role} file {path!r} does not exist.")
    if file.suffix.lower() not in FILE_BUILDERS:
        raise ValueError(f"The {role} file {path!r} has an unknown type {file.suffix!r}; allowed: "
                         f"{', '.join(sorted(FILE_BUILDERS))}.")
    if file.stat().st_size == 0:
        raise ValueError(f"The {role} file {path!r} is empty.")


@dataclasses.dataclass
class Seq2SeqDataArgs(DataArgs):
    """Where the (source, target) pairs come from: DataArgs's sources, read as two text columns (not `text_column`)."""

    embedded_name: ClassVar[str] = EMBEDDED_TASK

    source_column: str = "source"
    target_column: str = "target"
    embedded_task: str = "docstrings"  # used without --dataset_name and --train_file

    def check(self):
        super().check()
        if self.embedded_task not in EMBEDDED_SEQ2SEQ_TASKS:
            raise ValueError(f"--embedded_task must be one of {', '.join(EMBEDDED_SEQ2SEQ_TASKS)}, got "
                             f"{self.embedded_task!r}.")
        if self.train_file and FILE_BUILDERS[Path(self.train_file).suffix.lower()] == "text":
            raise ValueError(f"--task seq2seq reads pairs from columns of json/jsonl/csv/parquet files, but "
                             f"{self.train_file!r} is a text file (one column of lines).")

    def describe(self) -> dict:
        if self.dataset_name or self.train_file or self.embedded_task != "dates":
            return super().describe()
        held_out = held_out_date_years()
        source = (f"{EMBEDDED_DATE_TASK}: {DATE_TRAIN_PAIRS} training dates of {len(DATE_YEARS) - len(held_out)} "
                  f"years in {len(date_formats())} formats, {DATE_VALIDATION_PAIRS} validation dates of the held-out "
                  f"years {held_out}")
        return {"source": source, "args": dataclasses.asdict(self)}


def embedded_corpus_files(max_bytes: int) -> list[str]:
    """Top-level `*.py` modules of the standard library in sorted order, whole files, while they fit `max_bytes`."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files, total = [], 0
    for file in sorted(stdlib.glob("*.py")):
        size = file.stat().st_size
        if total + size > max_bytes:
            continue  # skip a file that does not fit and keep going: a smaller one later may
        files.append(str(file))
        total += size
    if not files:
        raise ValueError(f"No standard-library module fits --max_corpus_bytes={max_bytes} (found in {stdlib}).")
    return files


def load_raw_datasets(data: DataArgs) -> tuple[DatasetDict, bool]:
    """Load the text as a DatasetDict with "train" and "validation" splits.

    Also returns whether rows are whole documents (to be separated by an end-of-sequence token) rather than lines.
    With `data.streaming`, "train" is an `IterableDataset` read lazily and "validation" the held-out rows in memory
    (see `with_held_out_rows`).
    """
    data.check()
    columns = {"--text_column": data.text_column}
    if data.dataset_name or data.train_file:
        raw, documents = load_hub_or_files(data)
    else:
        split_files = split_embedded_corpus(data.max_corpus_bytes, data.validation_split_percentage)
        raw = load_dataset("text", data_files=split_files, sample_by="document")
        documents = True
    if data.streaming:
        return with_held_out_rows(raw, data.validation_samples, list(columns.values()), columns,
                                  data.validation_split_name), documents
    raw = with_validation_split(raw, data.validation_split_percentage, data.validation_split_name)
    check_columns(raw, columns)
    return raw, documents


def load_hub_or_files(data: DataArgs) -> tuple[DatasetDict, bool]:
    """`dataset_name` or `train_file` (+ `validation_file`) as loaded by `datasets` (an IterableDatasetDict with
    `data.streaming`); True if rows are documents."""
    if data.dataset_name:
        return load_dataset(data.dataset_name, data.dataset_config_name, streaming=data.streaming), True
    data_files = {"train": data.train_file}
    if data.validation_file:
        data_files["validation"] = data.validation_file
    builder = FILE_BUILDERS[Path(data.train_file).suffix.lower()]
    # keep_linebreaks: lines are concatenated when packing, so they must keep their "\n".
    options = {"keep_linebreaks": True} if builder == "text" else {}
    try:
        return load_dataset(builder, data_files=data_files, streaming=data.streaming, **options), builder != "text"
    except DatasetGenerationError as error:  # says only "An error occurred while generating the dataset"
        cause = error.__cause__ or error
        files = " or ".join(repr(path) for path in data_files.values())
        raise ValueError(f"Could not read {files} as {builder} data: {type(cause).__name__}: {cause}") from None


def split_embedded_corpus(max_bytes: int, validation_split_percentage: float) -> dict[str, list[str]]:
    """The embedded corpus's files as {"train": [...], "validation": [...]}: whole modules are held out."""
    files = embedded_corpus_files(max_bytes)
    # Hold out one file in every `stride`, stratified by size: the held-out share of the text stays close to the
    # percentage, whatever the cap, instead of hinging on whether one 230 kB module lands in it.
    stride = max(2, round(100 / validation_split_percentage))
    by_size = sorted(files, key=lambda f: (Path(f).stat().st_size, f))
    if len(files) < 2:
        raise ValueError(f"--max_corpus_bytes {max_bytes} leaves {len(files)} file of the embedded corpus; at least "
                         "2 are needed to hold one out for validation.")
    # With fewer than `stride` files (a small cap), the median-sized file is held out.
    ranks = range(stride // 2, len(files), stride) if len(files) > stride // 2 else [len(files) // 2]
    held_out = {by_size[rank] for rank in ranks}
    return {"train": [f for f in files if f not in held_out], "validation": sorted(held_out)}


def with_validation_split(raw: DatasetDict, validation_split_percentage: float, name: str = "validation"
                          ) -> DatasetDict:
    """Only "train" and "validation" (the split `name`); without a validation split, the last pct % of the training
    rows become it."""
    if name != "validation":
        if name not in raw:
            raise ValueError(f"--validation_split_name {name!r}: the dataset has no such split; its splits are "
                             f"{', '.join(raw)}.")
        return DatasetDict(train=raw["train"], validation=raw[name])
    if "validation" not in raw:
        held_out = raw["train"].train_test_split(test_size=validation_split_percentage / 100, shuffle=False)
        raw = DatasetDict(train=held_out["train"], validation=held_out["test"])
    return DatasetDict(train=raw["train"], validation=raw["validation"])


def with_fields(row: dict, names: list[str]) -> dict:
    """`row` with a column for each dotted name: "translation.en" is row["translation"]["en"] (a stream's flatten)."""
    fields = {}
    for name in names:
        value = row
        for key in name.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        fields[name] = value
    return fields


def with_held_out_rows(raw: dict, num_rows: int, key_columns: list[str], columns: dict[str, str],
                       validation_name: str = "validation") -> DatasetDict:
    """A stream's "train" (an IterableDataset) and "validation" (the first `num_rows` rows of the split
    `validation_name`, in memory).

    Without a validation split, the first `num_rows` rows of the training stream are held out, and training drops
    every row whose `key_columns` equal those of a held-out row that is not blank: the filter looks at rows, not
    positions, so it holds however the stream is split later over processes and workers (and a duplicate of a
    held-out row is not trained on either).
    """
    train = raw["train"]
    check_stream_columns(train, "train", columns)
    if validation_name != "validation" and validation_name not in raw:
        raise ValueError(f"--validation_split_name {validation_name!r}: the dataset has no such split; its splits are "
                         f"{', '.join(raw)}.")
    validation = first_rows(raw[validation_name] if validation_name in raw else train, num_rows)
    check_columns(DatasetDict(validation=validation), columns)
    if validation_name not in raw:
        # A blank row (an empty line of a text file) is not held out: it would take every blank line with it.
        held_out = frozenset(values for values in zip(*(validation[column] for column in key_columns), strict=True)
                             if any(isinstance(value, str) and value.strip() for value in values))
        train = train.filter(functools.partial(is_not_held_out, held_out=held_out), input_columns=key_columns)
    return DatasetDict(train=train, validation=validation)


def is_not_held_out(*values: str, held_out: frozenset) -> bool:
    return values not in held_out


def first_rows(stream: IterableDataset, num_rows: int) -> Dataset:
    """The first `num_rows` rows of a stream, in memory."""
    try:
        return Dataset.from_list(list(stream.take(num_rows)))
    except DatasetGenerationError as error:  # says only "An error occurred while generating the dataset"
        cause = error.__cause__ or error
        raise ValueError(f"Could not read the data: {type(cause).__name__}: {cause}") from None


def check_stream_columns(stream: IterableDataset, name: str, columns: dict[str, str]):
    """A stream must hold every text column; its first row tells when `datasets` does not know its features."""
    first = next(iter(stream), None)
    if first is None:
        raise ValueError(f"The {name} split is empty.")
    for flag, column in columns.items():
        if column not in first:
            raise ValueError(f"The {name} data has no column {column!r}; its columns are {list(first)}. Pick one "
                             f"with {flag}.")


def check_columns(raw: DatasetDict, columns: dict[str, str]):
    """Each split must be non-empty and hold every text column; `columns` maps the flag that names one to its name."""
    for name, split in raw.items():
        for flag, column in columns.items():
            if column not in split.column_names:
                raise ValueError(f"The {name} data has no column {column!r}; its columns are {split.column_names}. "
                                 f"Pick one with {flag}.")
        if len(split) == 0:
            raise ValueError(f"The {name} split is empty.")


def train_bpe_tokenizer(texts: Iterator[str], vocab_size: int, with_mask_token: bool, split_digits: bool = False
                        ) -> PreTrainedTokenizerFast:
    """Byte-level BPE (as GPT-2) trained on `texts`: every byte is a token, so no text is ever out of vocabulary.

    With `split_digits`, every digit is a token of its own (as in Llama's tokenizer): a number the training text never
    held (a held-out year) is then spelled with the same tokens as those it did.
    """
    special_tokens = list(SPECIAL_TOKENS.values()) + ([MASK_TOKEN] if with_mask_token else [])
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(special_tokens):
        raise ValueError(f"--vocab_size must be at least {len(alphabet) + len(special_tokens)} (256 byte tokens plus "
                         f"{len(special_tokens)} special tokens), got {vocab_size}.")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split_digits:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                           tokenizer.pre_tokenizer])
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, initial_alphabet=alphabet, show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    mask = {"mask_token": MASK_TOKEN} if with_mask_token else {}
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS, **mask)


def text_batches(dataset: Dataset, column: str, batch_size: int = 1000) -> Iterator[list[str]]:
    """Stream a text column in batches (what `Tokenizer.train_from_iterator` reads) without loading it whole."""
    for start in range(0, len(dataset), batch_size):
        yield dataset[start : start + batch_size][column]


def tokenize_and_pack(
    raw: DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    text_column: str,
    block_size: int,
    separate_documents: bool,
    add_labels: bool,
    num_proc: int | None = None,
) -> DatasetDict:
    """Tokenize every row, concatenate, and cut into `block_size` blocks ("input_ids", plus "labels" if asked).

    Blocks ignore row boundaries, as in transformers' `run_clm.py`: no padding is ever needed. With
    `separate_documents`, an end-of-sequence token closes each row so the model sees where a document ends. The
    remainder of each map batch that does not fill a block is dropped.
    """
    columns = next(iter(raw.values())).column_names
    tokenized = raw.map(document_tokenizer(tokenizer, text_column, separate_documents), batched=True,
                        num_proc=num_proc, remove_columns=columns, desc="Tokenizing")
    packed = tokenized.map(block_packer(block_size, add_labels), batched=True, num_proc=num_proc,
                           desc=f"Packing into blocks of {block_size}")
    for name, split in packed.items():
        if len(split) == 0:
            tokens = sum(len(ids) for ids in tokenized[name]["input_ids"])
            raise ValueError(f"The {name} split has {tokens} tokens, not enough for one block of --block_size "
                             f"{block_size}. Give more text or a smaller --block_size.")
    return packed


def tokenize_and_pack_stream(stream: IterableDataset, tokenizer: PreTrainedTokenizerBase, text_column: str,
                             block_size: int, separate_documents: bool, add_labels: bool) -> IterableDataset:
    """`tokenize_and_pack` on the fly, as transformers' `run_clm.py` packs a stream: blocks from each map batch of
    1,000 rows, its remainder dropped."""
    tokenized = stream.map(document_tokenizer(tokenizer, text_column, separate_documents), batched=True,
                           remove_columns=stream_columns(stream))
    return tokenized.map(block_packer(block_size, add_labels), batched=True)


# The map and filter functions of a stream are partials of module functions, not closures: DataLoader workers started
# by spawn or forkserver (macOS; Linux from Python 3.14 on) receive them pickled.

def document_tokenizer(tokenizer: PreTrainedTokenizerBase, text_column: str, separate_documents: bool
                       ) -> Callable[[dict], dict]:
    """A batched map function: the rows of `text_column` -> their "input_ids" (with `separate_documents`, each closed
    by the end-of-sequence token)."""
    eos = [tokenizer.eos_token_id] if separate_documents and tokenizer.eos_token_id is not None else []
    return functools.partial(tokenize_documents, tokenizer=tokenizer, text_column=text_column, eos=eos)


def tokenize_documents(batch: dict, tokenizer: PreTrainedTokenizerBase, text_column: str, eos: list[int]) -> dict:
    # Whole documents, longer than the model's positions on purpose (they are cut into blocks): no warning.
    ids = tokenizer(batch[text_column], add_special_tokens=False, verbose=False)["input_ids"]
    return {"input_ids": [row + eos for row in ids]}


def block_packer(block_size: int, add_labels: bool) -> Callable[[dict], dict]:
    """A batched map function: the batch's "input_ids" concatenated and cut into `block_size` blocks."""
    return functools.partial(pack_blocks, block_size=block_size, add_labels=add_labels)


def pack_blocks(batch: dict, block_size: int, add_labels: bool) -> dict:
    stream = list(itertools.chain.from_iterable(batch["input_ids"]))
    usable = len(stream) // block_size * block_size
    blocks = [stream[i : i + block_size] for i in range(0, usable, block_size)]
    # The causal loss shifts labels itself, so labels are the inputs unchanged.
    return {"input_ids": blocks, "labels": [list(b) for b in blocks]} if add_labels else {"input_ids": blocks}


def stream_columns(stream: IterableDataset) -> list[str]:
    """The columns of a stream; its first row tells when `datasets` does not know its features (text files)."""
    return stream.column_names or list(next(iter(stream)))


def load_seq2seq_datasets(data: Seq2SeqDataArgs) -> DatasetDict:
    """Load (source, target) pairs as a DatasetDict with "train" and "validation" splits of text columns."""
    data.check()
    if data.dataset_name or data.train_file:
        raw, _ = load_hub_or_files(data)
    elif data.embedded_task == "dates":
        raw = load_date_pairs()
    else:
        raw = load_docstring_pairs(data.max_corpus_bytes, data.validation_split_percentage)
    columns = {"--source_column": data.source_column, "--target_column": data.target_column}
    # A field of a struct column, as WMT14's translation.en: flattened, each field is a column of that name.
    nested = [column for column in columns.values() if "." in column]
    if data.streaming:
        if nested:
            raw = {name: split.map(functools.partial(with_fields, names=nested)) for name, split in raw.items()}
        raw = with_held_out_rows(raw, data.validation_samples, list(columns.values()), columns,
                                 data.validation_split_name)
    else:
        raw = with_validation_split(raw, data.validation_split_percentage, data.validation_split_name)
        raw = raw.flatten() if nested else raw
        check_columns(raw, columns)
    for name, split in raw.items():
        for column in columns.values():
            feature = (split.features or {}).get(column)  # a stream may not know its features
            if feature is not None and getattr(feature, "dtype", None) not in ("string", "large_string"):
                raise ValueError(f"The {name} column {column!r} must hold text, got {feature}.")
    # A row without a source or a target (an empty cell of a csv file) teaches nothing: it is dropped.
    raw = DatasetDict({name: split.filter(has_source_and_target, input_columns=list(columns.values()))
                       for name, split in raw.items()})
    check_columns(DatasetDict(validation=raw["validation"]) if data.streaming else raw, columns)  # none left empty
    return raw


def has_source_and_target(source: str | None, target: str | None) -> bool:
    return bool(source and source.strip() and target and target.strip())


def load_docstring_pairs(max_bytes: int, validation_split_percentage: float) -> DatasetDict:
    """The embedded task's pairs, split by module like the embedded corpus: held-out modules are never trained on."""
    split_files = split_embedded_corpus(max_bytes, validation_split_percentage)
    files = sorted(split_files["train"] + split_files["validation"])
    # `datasets` fingerprints a module-level generator by its name only; hashing this file's text instead means an
    # edit of the extraction rebuilds the cached pairs.
    fingerprint = Hasher.hash([Path(__file__).read_text(), files])
    # A tuple, not a list: `datasets` would take a list for shards, one generator each, and dedupe per file only.
    pairs = Dataset.from_generator(docstring_pairs, gen_kwargs={"files": tuple(files)}, fingerprint=fingerprint)
    held_out = {Path(file).stem for file in split_files["validation"]}
    # The pairs come grouped by module. The validation pairs are shuffled (with a fixed seed) so that the first ones,
    # those evaluation generates targets for, sample every held-out module rather than the first (`_pydecimal`
    # alone holds some 200).
    raw = DatasetDict(
        train=pairs.filter(lambda module: module not in held_out, input_columns="module"),
        validation=pairs.filter(lambda module: module in held_out, input_columns="module").shuffle(seed=0),
    )
    for name, split in raw.items():
        if len(split) == 0:
            modules = ", ".join(sorted(Path(file).stem for file in split_files[name]))
            raise ValueError(f"The {name} modules of the embedded task ({modules}) have no documented function; "
                             f"raise --max_corpus_bytes (got {max_bytes}).")
    return raw


def docstring_pairs(files: tuple[str, ...]) -> Iterator[dict]:
    """`function_pairs` of each file in order, without exact duplicates (the first one is kept)."""
    seen = set()
    for file in files:
        for pair in function_pairs(Path(file).read_text(encoding="utf-8"), Path(file).stem):
            key = (pair["source"], pair["target"])
            if key not in seen:
                seen.add(key)
                yield pair


def function_pairs(code: str, module: str) -> Iterator[dict]:
    """One row per documented function of `code` (methods and nested functions too): "source" is the function's
    text (decorators excluded), dedented, with its docstring statement cut out; "target" is the first line of the
    docstring, cleaned as `inspect.cleandoc` does (so a docstring that opens with a line break gives its first line
    of text).

    Skipped: functions whose body is only the docstring (plus `pass` or `...`), and the rare docstrings that share a
    line with other code (`def f(): "Doc."; return 1`), which cutting whole lines would mangle.
    """
    lines = LINE.findall(code)
    for node in ast.walk(ast.parse(code)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        docstring = ast.get_docstring(node)
        target = docstring.splitlines()[0].strip() if docstring else ""
        docstring_node, body = node.body[0], node.body[1:]
        if not target or all(is_placeholder(statement) for statement in body):
            continue
        if not owns_its_lines(docstring_node, lines):
            continue
        function_lines = source_segment_lines(node, lines)
        del function_lines[docstring_node.lineno - node.lineno : docstring_node.end_lineno - node.lineno + 1]
        # Dedent by the def's own indentation: `textwrap.dedent` leaves a method as it is when one of its strings
        # has a line at column 0, and the source would not parse.
        indent = re.compile(rf"^[ \t]{{0,{node.col_offset}}}")
        source = "".join(indent.sub("", line) for line in function_lines)
        yield {"source": source, "target": target, "module": module, "function": node.name}


# A line of source with its ending, split as the Python parser does (\r\n, \r or \n; a form feed is no line break).
LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


def source_segment_lines(node: ast.AST, lines: list[str]) -> list[str]:
    """The lines of `ast.get_source_segment(code, node, padded=True)`, from the file's lines split once.

    (`get_source_segment` splits the whole file again at each call: 20 s instead of 2 for the embedded corpus.)
    """
    segment = lines[node.lineno - 1 : node.end_lineno]
    first, last = segment[0].encode(), segment[-1].encode()  # AST column offsets count UTF-8 bytes
    if len(segment) == 1:
        return [first[node.col_offset : node.end_col_offset].decode()]
    return [" " * node.col_offset + first[node.col_offset :].decode(), *segment[1:-1],
            last[: node.end_col_offset].decode()]


def is_placeholder(statement: ast.stmt) -> bool:
    """`pass` or `...`: a statement that stands in for a body."""
    ellipsis = isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant) and (
        statement.value.value is Ellipsis)
    return isinstance(statement, ast.Pass) or ellipsis


def owns_its_lines(statement: ast.stmt, lines: list[str]) -> bool:
    """Whether `statement` has its lines to itself: nothing before it, at most a comment after it."""
    before = lines[statement.lineno - 1].encode()[: statement.col_offset]
    after = lines[statement.end_lineno - 1].encode()[statement.end_col_offset :].strip()
    return not before.strip() and (not after or after.startswith(b"#"))


# --- The embedded date task: dates in many human formats -> ISO 8601 ------------------------------------------------

EMBEDDED_DATE_TASK = "dates-to-iso8601"
# 100 years, so that two-digit years are unambiguous under strptime's %y pivot (69-99 -> 19xx, 00-68 -> 20xx).
DATE_YEARS = range(1969, 2069)
DATE_TRAIN_PAIRS = 20_000
DATE_VALIDATION_PAIRS = 1_000


def date_formats() -> dict[str, Callable[[datetime.date], str]]:
    """Name -> how a human writes the date; month and weekday names come from `calendar` (English in the C locale).

    No two formats share a shape with the day and month swapped ("03/04/1987" is only ever month first), so every
    source has exactly one reading.
    """
    month, mon = calendar.month_name, calendar.month_abbr
    day, dy = calendar.day_name, calendar.day_abbr

    def ordinal(n: int) -> str:
        return f"{n}{'th' if 11 <= n % 100 <= 13 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"

    return {
        "month d, yyyy": lambda d: f"{month[d.month]} {d.day}, {d.year}",
        "d month yyyy": lambda d: f"{d.day} {month[d.month]} {d.year}",
        "mon d, yyyy": lambda d: f"{mon[d.month]} {d.day}, {d.year}",
        "d mon yyyy": lambda d: f"{d.day} {mon[d.month]} {d.year}",
        "weekday, month d, yyyy": lambda d: f"{day[d.weekday()]}, {month[d.month]} {d.day}, {d.year}",
        "dy, d mon yyyy (RFC 2822)": lambda d: f"{dy[d.weekday()]}, {d.day:02d} {mon[d.month]} {d.year}",
        "mm/dd/yyyy": lambda d: f"{d.month:02d}/{d.day:02d}/{d.year}",
        "m/d/yy": lambda d: f"{d.month}/{d.day}/{d.year % 100:02d}",
        "dd.mm.yyyy": lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",
        "d-mon-yyyy": lambda d: f"{d.day}-{mon[d.month]}-{d.year}",
        "yyyymmdd": lambda d: f"{d.year}{d.month:02d}{d.day:02d}",
        "yyyy/mm/dd": lambda d: f"{d.year}/{d.month:02d}/{d.day:02d}",
        "month dth, yyyy": lambda d: f"{month[d.month]} {ordinal(d.day)}, {d.year}",
        "the dth of month yyyy": lambda d: f"the {ordinal(d.day)} of {month[d.month]} {d.year}",
        "D MONTH YYYY": lambda d: f"{d.day} {month[d.month].upper()} {d.year}",
        "month d yyyy (lower case)": lambda d: f"{month[d.month].lower()} {d.day} {d.year}",
        "yyyy, month d": lambda d: f"{d.year}, {month[d.month]} {d.day}",
        "mon. d, 'yy": lambda d: f"{mon[d.month]}. {d.day}, '{d.year % 100:02d}",
        "weekday d month yyyy": lambda d: f"{day[d.weekday()]} {d.day} {month[d.month]} {d.year}",
    }


def held_out_date_years() -> list[int]:
    """One year in ten, drawn once with a fixed seed: the validation dates fall only in years never trained on."""
    return sorted(random.Random(0).sample(list(DATE_YEARS), len(DATE_YEARS) // 10))


def date_pairs(years: list[int], num_pairs: int, seed: int) -> list[dict]:
    """`num_pairs` pairs with distinct sources: a day of `years` drawn uniformly, written in a format drawn uniformly
    -> the same day in ISO 8601 (yyyy-mm-dd). Deterministic given the arguments."""
    rng, formats = random.Random(seed), date_formats()
    names = list(formats)
    first, last = datetime.date(min(years), 1, 1).toordinal(), datetime.date(max(years), 12, 31).toordinal()
    wanted = set(years)
    pairs, seen = [], set()
    while len(pairs) < num_pairs:
        day = datetime.date.fromordinal(rng.randint(first, last))
        name = rng.choice(names)
        source = formats[name](day)
        if day.year not in wanted or source in seen:  # "May 5, 1990" is both "mon d, yyyy" and "month d, yyyy"
            continue
        seen.add(source)
        pairs.append({"source": source, "target": day.isoformat(), "format": name})
    return pairs


def load_date_pairs() -> DatasetDict:
    """The date task's splits: training days from 90 years, validation days from the 10 held-out years."""
    held_out = held_out_date_years()
    train_years = [year for year in DATE_YEARS if year not in held_out]
    return DatasetDict(train=Dataset.from_list(date_pairs(train_years, DATE_TRAIN_PAIRS, seed=1)),
                       validation=Dataset.from_list(date_pairs(held_out, DATE_VALIDATION_PAIRS, seed=2)))


def describe_pairs(raw: DatasetDict) -> dict:
    """Pairs per split and, for the embedded task, how many modules they come from and which are held out."""
    description = {f"{name}_pairs": len(split) for name, split in raw.items()}
    if "module" in raw["train"].column_names:
        for name, split in raw.items():
            description[f"{name}_modules"] = len(set(split["module"]))
        description["validation_module_names"] = sorted(set(raw["validation"]["module"]))
    return description


def tokenize_pairs(
    raw: DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    source_column: str,
    target_column: str,
    max_source_length: int,
    max_target_length: int,
    num_proc: int | None = None,
) -> DatasetDict:
    """Source -> "input_ids"/"attention_mask" (at most `max_source_length` tokens); target -> "labels" (at most
    `max_target_length` tokens, the last one the end-of-sequence token, which tells generation where to stop).

    Rows keep their own lengths: `DataCollatorForSeq2Seq` pads each batch.
    """
    tokenize = pair_tokenizer(tokenizer, source_column, target_column, max_source_length, max_target_length)
    columns = next(iter(raw.values())).column_names
    return raw.map(tokenize, batched=True, num_proc=num_proc, remove_columns=columns, desc="Tokenizing pairs")


def tokenize_pairs_stream(stream: IterableDataset, tokenizer: PreTrainedTokenizerBase, source_column: str,
                          target_column: str, max_source_length: int, max_target_length: int) -> IterableDataset:
    """`tokenize_pairs` on the fly."""
    tokenize = pair_tokenizer(tokenizer, source_column, target_column, max_source_length, max_target_length)
    return stream.map(tokenize, batched=True, remove_columns=stream_columns(stream))


def pair_tokenizer(tokenizer: PreTrainedTokenizerBase, source_column: str, target_column: str,
                   max_source_length: int, max_target_length: int) -> Callable[[dict], dict]:
    """The batched map function of `tokenize_pairs`."""
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no end-of-sequence token, which closes every seq2seq target.")
    return functools.partial(tokenize_pair_batch, tokenizer=tokenizer, columns=(source_column, target_column),
                             max_lengths=(max_source_length, max_target_length))


def tokenize_pair_batch(batch: dict, tokenizer: PreTrainedTokenizerBase, columns: tuple[str, str],
                        max_lengths: tuple[int, int]) -> dict:
    sources = tokenizer(batch[columns[0]], max_length=max_lengths[0], truncation=True, add_special_tokens=False)
    targets = tokenizer(batch[columns[1]], max_length=max_lengths[1] - 1, truncation=True,
                        add_special_tokens=False)["input_ids"]
    return {"input_ids": sources["input_ids"], "attention_mask": sources["attention_mask"],
            "labels": [ids + [tokenizer.eos_token_id] for ids in targets]}
