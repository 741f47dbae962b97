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
"""

import dataclasses
import itertools
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset
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


@dataclasses.dataclass
class DataArgs:
    """Where the training text comes from; stored in `training_summary.json` so the split can be rebuilt later."""

    dataset_name: str | None = None
    dataset_config_name: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    text_column: str = "text"
    validation_split_percentage: float = 5.0
    max_corpus_bytes: int = 4_000_000

    def check(self):
        """Raise ValueError for inputs that would fail later, before any work starts."""
        if self.dataset_name and self.train_file:
            raise ValueError(f"Pass --dataset_name or --train_file, not both (got {self.dataset_name!r} and "
                             f"{self.train_file!r}).")
        if self.validation_file and not self.train_file:
            raise ValueError(f"--validation_file {self.validation_file!r} needs a --train_file as well.")
        for role, path in (("train", self.train_file), ("validation", self.validation_file)):
            if path is not None:
                check_data_file(path, role)
        if self.train_file and self.validation_file:
            train_builder = FILE_BUILDERS[Path(self.train_file).suffix.lower()]
            validation_builder = FILE_BUILDERS[Path(self.validation_file).suffix.lower()]
            if train_builder != validation_builder:
                raise ValueError(f"--train_file and --validation_file must have the same format, got "
                                 f"{train_builder!r} and {validation_builder!r} files.")
        if not 0 < self.validation_split_percentage < 100:
            raise ValueError(f"--validation_split_percentage must lie in (0, 100), got "
                             f"{self.validation_split_percentage}.")
        if self.max_corpus_bytes <= 0:
            raise ValueError(f"--max_corpus_bytes must be positive, got {self.max_corpus_bytes}.")

    def describe(self) -> dict:
        """A JSON-serialisable description of the data, for the training summary and the model card."""
        if self.dataset_name:
            source = f"dataset {self.dataset_name}" + (f" ({self.dataset_config_name})"
                                                       if self.dataset_config_name else "")
        elif self.train_file:
            source = f"local file {self.train_file}"
        else:
            files = embedded_corpus_files(self.max_corpus_bytes)
            source = (f"{EMBEDDED_CORPUS}: {len(files)} top-level modules of the Python standard library in "
                      f"{sysconfig.get_paths()['stdlib']}, {sum(Path(f).stat().st_size for f in files)} bytes")
        return {"source": source, "args": dataclasses.asdict(self)}


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
    """
    data.check()
    if data.dataset_name:
        raw = load_dataset(data.dataset_name, data.dataset_config_name)
        documents = True
    elif data.train_file:
        data_files = {"train": data.train_file}
        if data.validation_file:
            data_files["validation"] = data.validation_file
        builder = FILE_BUILDERS[Path(data.train_file).suffix.lower()]
        # keep_linebreaks: lines are concatenated when packing, so they must keep their "\n".
        options = {"keep_linebreaks": True} if builder == "text" else {}
        raw = load_dataset(builder, data_files=data_files, **options)
        documents = builder != "text"
    else:
        files = embedded_corpus_files(data.max_corpus_bytes)
        # Hold out one file in every `stride`, stratified by size: the held-out share of the text stays close to
        # the percentage, whatever the cap, instead of hinging on whether one 230 kB module lands in it.
        stride = max(2, round(100 / data.validation_split_percentage))
        by_size = sorted(files, key=lambda f: (Path(f).stat().st_size, f))
        if len(files) < 2:
            raise ValueError(f"--max_corpus_bytes {data.max_corpus_bytes} leaves {len(files)} file of the embedded "
                             "corpus; at least 2 are needed to hold one out for validation.")
        # With fewer than `stride` files (a small cap), the median-sized file is held out.
        ranks = range(stride // 2, len(files), stride) if len(files) > stride // 2 else [len(files) // 2]
        held_out = {by_size[rank] for rank in ranks}
        split_files = {"train": [f for f in files if f not in held_out], "validation": sorted(held_out)}
        raw = load_dataset("text", data_files=split_files, sample_by="document")
        documents = True
    if "validation" not in raw:
        held_out = raw["train"].train_test_split(test_size=data.validation_split_percentage / 100, shuffle=False)
        raw = DatasetDict(train=held_out["train"], validation=held_out["test"])
    for name in ("train", "validation"):
        if data.text_column not in raw[name].column_names:
            raise ValueError(f"The {name} data has no column {data.text_column!r}; its columns are "
                             f"{raw[name].column_names}. Pick one with --text_column.")
        if len(raw[name]) == 0:
            raise ValueError(f"The {name} split is empty.")
    return DatasetDict(train=raw["train"], validation=raw["validation"]), documents


def train_bpe_tokenizer(texts: Iterator[str], vocab_size: int, with_mask_token: bool) -> PreTrainedTokenizerFast:
    """Byte-level BPE (as GPT-2) trained on `texts`: every byte is a token, so no text is ever out of vocabulary."""
    special_tokens = list(SPECIAL_TOKENS.values()) + ([MASK_TOKEN] if with_mask_token else [])
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(special_tokens):
        raise ValueError(f"--vocab_size must be at least {len(alphabet) + len(special_tokens)} (256 byte tokens plus "
                         f"{len(special_tokens)} special tokens), got {vocab_size}.")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
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
    eos = [tokenizer.eos_token_id] if separate_documents and tokenizer.eos_token_id is not None else []

    def tokenize(batch: dict) -> dict:
        ids = tokenizer(batch[text_column], add_special_tokens=False)["input_ids"]
        return {"input_ids": [row + eos for row in ids]}

    def pack(batch: dict) -> dict:
        stream = list(itertools.chain.from_iterable(batch["input_ids"]))
        usable = len(stream) // block_size * block_size
        blocks = [stream[i : i + block_size] for i in range(0, usable, block_size)]
        # The causal loss shifts labels itself, so labels are the inputs unchanged.
        return {"input_ids": blocks, "labels": [list(b) for b in blocks]} if add_labels else {"input_ids": blocks}

    columns = next(iter(raw.values())).column_names
    tokenized = raw.map(tokenize, batched=True, num_proc=num_proc, remove_columns=columns, desc="Tokenizing")
    packed = tokenized.map(pack, batched=True, num_proc=num_proc, desc=f"Packing into blocks of {block_size}")
    for name, split in packed.items():
        if len(split) == 0:
            tokens = sum(len(ids) for ids in tokenized[name]["input_ids"])
            raise ValueError(f"The {name} split has {tokens} tokens, not enough for one block of --block_size "
                             f"{block_size}. Give more text or a smaller --block_size.")
    return packed
