"""The embedded date task of `scripts/train.py --task seq2seq --embedded_task dates`: human-written dates -> ISO 8601,
validated on years never trained on, with a tokenizer that spells every number digit by digit.
"""

import datetime
import json
import re

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

from hf_minitransformer.data import (
    DATE_YEARS,
    Seq2SeqDataArgs,
    date_formats,
    held_out_date_years,
    load_date_pairs,
    load_seq2seq_datasets,
    text_batches,
    train_bpe_tokenizer,
)

from .conftest import load_script


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


def test_train_script_runs_the_date_task(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets_cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train = load_script("train")
    out = tmp_path / "dates"
    try:
        train.main(["--task", "seq2seq", "--embedded_task", "dates", "--model_config", "tiny", "--config_overrides",
                    "hidden_size=32,intermediate_size=64,num_attention_heads=2", "--max_train_steps", "3",
                    "--max_eval_generate_samples", "4", "--report_to", "none", "--output_dir", str(out)])
    finally:
        torch.set_num_threads(threads)
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["data"]["source"].startswith("dates-to-iso8601: 20000 training dates of 90 years in 19 formats")
    assert (summary["data"]["train_pairs"], summary["data"]["validation_pairs"]) == (20_000, 1_000)
    assert summary["generation"]["samples"] == 4
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).tokenize("2066-11-25") == list("2066-11-25")  # digits split
