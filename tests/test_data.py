"""hf_minitransformer/data.py on its own: the embedded docstring task (function/docstring pairs cut from the
standard library, whole modules held out) and the embedded date task (human-written dates -> ISO 8601, validated on
years never trained on, with a tokenizer that spells every number digit by digit).
"""

import ast
import datetime
import inspect
import re
import shlex
from pathlib import Path

import pytest

from hf_minitransformer.data import (
    DATE_YEARS,
    Seq2SeqDataArgs,
    date_formats,
    describe_pairs,
    function_pairs,
    held_out_date_years,
    load_date_pairs,
    load_seq2seq_datasets,
    text_batches,
    train_bpe_tokenizer,
)


# The docstring task's pairs are built with `datasets`, which caches them.
pytestmark = pytest.mark.usefixtures("private_datasets_cache")


# --- the docstring task ---------------------------------------------------------------------------------------------

def pairs_of(module) -> dict[str, dict]:
    return {pair["function"]: pair for pair in function_pairs(Path(module.__file__).read_text(), module.__name__)}


def test_docstring_pairs_of_known_stdlib_functions():
    pairs = pairs_of(shlex)
    quote = pairs["quote"]
    assert quote["target"] == inspect.getdoc(shlex.quote).splitlines()[0] == (
        "Return a shell-escaped version of the string *s*.")
    assert quote["source"].startswith("def quote(s):\n    if not s:\n")
    assert quote["module"] == "shlex"
    # A method comes dedented, without its docstring, and parses on its own.
    get_token = pairs["get_token"]
    assert get_token["target"] == inspect.getdoc(shlex.shlex.get_token).splitlines()[0]
    assert get_token["source"].startswith("def get_token(self):\n")
    assert ast.get_docstring(ast.parse(get_token["source"]).body[0]) is None
    for pair in pairs.values():
        assert '"""' not in pair["source"], pair["function"]


def test_function_pairs_cut_the_docstring_and_skip_empty_bodies():
    code = '''
class Box:
    @property
    def size(self):
        """
        The size of the box.

        More text that must not stay in the source.
        """
        return self._size  # trailing comment

    async def fetch(self):
        \'\'\'Fetch it.\'\'\'  # a comment on the docstring line
        return await self._get()

    def stub(self):
        """Only a stub."""
        ...

    def abstract(self):
        """Only a pass."""
        pass

    def no_doc(self):
        return 1

    def empty_doc(self):
        """"""
        return 2

def one_liner(): "Shares its line."; return 3
'''
    pairs = {pair["function"]: pair for pair in function_pairs(code, "box")}
    assert set(pairs) == {"size", "fetch"}
    # The segment ends where the last statement does, as ast.get_source_segment: a trailing comment goes.
    assert pairs["size"] == {"source": "def size(self):\n    return self._size",
                             "target": "The size of the box.", "module": "box", "function": "size"}
    assert pairs["fetch"]["source"] == "async def fetch(self):\n    return await self._get()"
    assert pairs["fetch"]["target"] == "Fetch it."


def test_embedded_task_holds_out_whole_modules():
    raw = load_seq2seq_datasets(Seq2SeqDataArgs())
    train_modules, validation_modules = set(raw["train"]["module"]), set(raw["validation"]["module"])
    assert train_modules and validation_modules and not train_modules & validation_modules
    pairs = [(row["source"], row["target"]) for split in raw.values() for row in split]
    assert len(pairs) == len(set(pairs)) > 2000  # no duplicates; about 2800 in CPython 3.11
    described = describe_pairs(raw)
    assert described["validation_pairs"] == len(raw["validation"]) > 100
    assert described["validation_modules"] == len(validation_modules)
    assert described["validation_module_names"] == sorted(validation_modules)
    assert all(row["target"] and row["target"] == row["target"].strip() for row in raw["train"])


# --- the date task -------------------------------------------------------------------------------------------------

# Each format as `strptime` reads it back (ordinal suffixes are dropped first; strptime ignores case).
STRPTIME = {
    "month d, yyyy": "%B %d, %Y", "d month yyyy": "%d %B %Y", "mon d, yyyy": "%b %d, %Y", "d mon yyyy": "%d %b %Y",
    "weekday, month d, yyyy": "%A, %B %d, %Y", "dy, d mon yyyy (RFC 2822)": "%a, %d %b %Y",
    "mm/dd/yyyy": "%m/%d/%Y", "m/d/yy": "%m/%d/%y", "dd.mm.yyyy": "%d.%m.%Y", "d-mon-yyyy": "%d-%b-%Y",
    "yyyymmdd": "%Y%m%d", "yyyy/mm/dd": "%Y/%m/%d", "month dth, yyyy": "%B %d, %Y",
    "the dth of month yyyy": "the %d of %B %Y", "D MONTH YYYY": "%d %B %Y", "month d yyyy (lower case)": "%B %d %Y",
    "yyyy, month d": "%Y, %B %d", "mon. d, 'yy": "%b. %d, '%y", "weekday d month yyyy": "%A %d %B %Y",
}


@pytest.fixture(scope="module")
def pairs():
    return load_date_pairs()


def test_every_source_reads_back_as_its_target(pairs):
    assert set(STRPTIME) == set(date_formats())
    for split in pairs.values():
        for row in split:
            source = re.sub(r"(\d)(st|nd|rd|th)\b", r"\1", row["source"])
            parsed = datetime.datetime.strptime(source, STRPTIME[row["format"]]).date()
            assert parsed.isoformat() == row["target"], row


def test_validation_years_are_never_trained_on(pairs):
    held_out = held_out_date_years()
    assert len(held_out) == 10 and set(held_out) <= set(DATE_YEARS)
    train_years = {int(target[:4]) for target in pairs["train"]["target"]}
    validation_years = {int(target[:4]) for target in pairs["validation"]["target"]}
    assert validation_years == set(held_out) and not train_years & validation_years
    assert len(train_years) == 90
    assert (len(pairs["train"]), len(pairs["validation"])) == (20_000, 1_000)
    assert len(set(pairs["train"]["source"])) == 20_000  # no pair twice
    assert set(pairs["validation"]["format"]) == set(date_formats())  # every format is validated
    again = load_date_pairs()  # deterministic
    assert again["validation"]["source"] == pairs["validation"]["source"]


def test_split_digits_spells_held_out_years_with_trained_tokens(pairs):
    texts = lambda split: text_batches(pairs[split], "target")  # noqa: E731
    tokenizer = train_bpe_tokenizer(texts("train"), vocab_size=400, with_mask_token=False, split_digits=True)
    assert tokenizer.tokenize("2031-04-17") == list("2031-04-17")
    seen = {token for batch in texts("train") for text in batch for token in tokenizer.tokenize(text)}
    unseen = {token for batch in texts("validation") for text in batch for token in tokenizer.tokenize(text)}
    assert unseen <= seen
    assert tokenizer.decode(tokenizer("March 14th, 1987")["input_ids"]) == "March 14th, 1987"
    # Without it, byte-level BPE merges the training years into tokens of their own.
    merged = train_bpe_tokenizer(texts("train"), vocab_size=400, with_mask_token=False)
    assert len(merged.tokenize("1987-03-14")) < 10


def test_unknown_embedded_task_is_a_value_error():
    with pytest.raises(ValueError, match="--embedded_task must be one of docstrings, dates, got 'calendar'"):
        load_seq2seq_datasets(Seq2SeqDataArgs(embedded_task="calendar"))
