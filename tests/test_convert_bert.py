"""BERT through scripts/convert.py: BertForMaskedLM and BertModel checkpoints become MiniTransformer folders with the
same logits, hidden states and fill-mask predictions, sentence pairs (token types) included; and the three BERT
fields cost the paper's default model nothing.

Sources are built here with transformers (tiny, trained a few steps) with a WordPiece tokenizer trained locally.
"""

import json

import pytest
import torch
import transformers
from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer, BertConfig, BertForMaskedLM, BertModel

from hf_minitransformer import MiniTransformerConfig, MiniTransformerForMaskedLM, MiniTransformerModel
from hf_minitransformer.conversion import convert_config

from .conftest import make_config, readme_block, run_python
from .test_convert import ENGLISH, LICENSE, SIZES, run_convert, train_a_few_steps, write_card


def wordpiece_tokenizer() -> transformers.BertTokenizer:
    from tokenizers import BertWordPieceTokenizer

    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(ENGLISH, vocab_size=150, min_frequency=1, show_progress=False,
                                  special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    return transformers.BertTokenizer(vocab=wordpiece.get_vocab())


def bert_config(tokenizer) -> BertConfig:
    return BertConfig(vocab_size=len(tokenizer), hidden_size=SIZES["hidden"], num_hidden_layers=SIZES["layers"],
                      num_attention_heads=SIZES["heads"], intermediate_size=SIZES["ffn"],
                      max_position_embeddings=SIZES["positions"], pad_token_id=tokenizer.pad_token_id)


def pair_batch(tokenizer) -> dict[str, torch.Tensor]:
    """Sentence pairs, padded: token type 1 on the second segment, padding on the shorter rows."""
    return dict(tokenizer(ENGLISH[:4], ENGLISH[4:8], padding=True, return_tensors="pt"))


@pytest.fixture(scope="module")
def bert_source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert-source")
    tokenizer = wordpiece_tokenizer()
    torch.manual_seed(0)
    model = BertForMaskedLM(bert_config(tokenizer))
    batches = []
    for i in range(0, len(ENGLISH), 4):
        batch = tokenizer(ENGLISH[i:i + 2], ENGLISH[i + 2:i + 4], padding=True, return_tensors="pt")
        batches.append(dict(batch, labels=batch["input_ids"]))
    train_a_few_steps(model, batches)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_card(folder)
    return folder


@pytest.fixture(scope="module")
def bert_converted(bert_source, tmp_path_factory):
    output = tmp_path_factory.mktemp("converted") / "bert-tiny"
    return output, run_convert(str(bert_source), str(output))


def test_bert_folder_computes_what_the_source_computes(bert_source, bert_converted):
    folder, printed = bert_converted
    print(printed)
    assert "same argmax: 1.0000" in printed and "generate" not in printed
    source = BertForMaskedLM.from_pretrained(bert_source).eval()
    converted = AutoModelForMaskedLM.from_pretrained(folder).eval()
    assert isinstance(converted, MiniTransformerForMaskedLM)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = pair_batch(tokenizer)
    assert batch["token_type_ids"].any() and not batch["attention_mask"].all()
    keep = batch["attention_mask"].bool()
    with torch.no_grad():
        theirs = source(**batch, output_hidden_states=True)
        ours = converted(**batch, output_hidden_states=True)
        without_types = converted(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    difference = (ours.logits - theirs.logits)[keep].abs().max().item()
    print(f"BERT: logits max abs diff {difference:.3g}")
    assert difference <= 1e-4
    assert torch.equal(ours.logits.argmax(-1)[keep], theirs.logits.argmax(-1)[keep])
    for mine, reference in zip(ours.hidden_states, theirs.hidden_states, strict=True):
        torch.testing.assert_close(mine[keep], reference[keep], rtol=0, atol=1e-5)
    # The segment embeddings are really used: ignoring them changes the second segment's logits.
    assert not torch.allclose(without_types[keep], ours.logits[keep], atol=1e-3)
    config = json.loads((folder / "config.json").read_text())
    assert config["type_vocab_size"] == 2 and config["embedding_layer_norm"] and config["masked_lm_transform"]
    assert f"license: {LICENSE}" in (folder / "README.md").read_text()


def test_fill_mask_pipeline_of_the_folder_predicts_as_the_source(bert_source, bert_converted):
    folder, _ = bert_converted
    texts = ["the cat sits on the [MASK]", "the [MASK] runs in the park"]
    ours = transformers.pipeline("fill-mask", model=str(folder), top_k=5)(texts)
    theirs = transformers.pipeline("fill-mask", model=str(bert_source), top_k=5)(texts)
    for mine, reference in zip(ours, theirs, strict=True):
        assert [p["token_str"] for p in mine] == [p["token_str"] for p in reference]
        assert [p["score"] for p in mine] == pytest.approx([p["score"] for p in reference], abs=1e-6)


def test_bert_model_without_head_becomes_a_bare_model(tmp_path):
    tokenizer = wordpiece_tokenizer()
    torch.manual_seed(0)
    source = BertModel(bert_config(tokenizer)).eval()  # with its pooler, which has no counterpart
    with torch.no_grad():
        for param in source.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    source.save_pretrained(tmp_path / "source")
    tokenizer.save_pretrained(tmp_path / "source")
    printed = run_convert(str(tmp_path / "source"), str(tmp_path / "out"))
    assert "pooler" in printed and "logits" not in printed
    converted = AutoModel.from_pretrained(tmp_path / "out").eval()
    assert type(converted) is MiniTransformerModel
    batch = pair_batch(tokenizer)
    keep = batch["attention_mask"].bool()
    with torch.no_grad():
        expected = source(**batch).last_hidden_state
        hidden = converted(**batch).last_hidden_state
    torch.testing.assert_close(hidden[keep], expected[keep], rtol=0, atol=1e-5)


@pytest.mark.parametrize("overrides, message", [
    (dict(position_embedding_type="relative_key"), "position_embedding_type='relative_key'"),
    (dict(is_decoder=True), "is_decoder=True"),
    (dict(hidden_act="gelu_fast"), "hidden_act='gelu_fast'"),
])
def test_bert_settings_without_an_exact_equivalent_are_refused(overrides, message):
    with pytest.raises(ValueError, match=f"`{message}`"):
        convert_config(BertConfig(vocab_size=99, hidden_size=32, num_attention_heads=4, **overrides))


def test_the_bert_fields_are_off_by_default_and_build_nothing():
    config = MiniTransformerConfig()
    assert (config.type_vocab_size, config.embedding_layer_norm, config.masked_lm_transform) == (0, False, False)
    model = MiniTransformerForMaskedLM(make_config())
    names = set(model.state_dict())
    assert not any("token_type" in name or "embeddings.layer_norm" in name or "transform" in name for name in names)
    # Segment 0 is the one segment it has (what a BERT tokenizer gives a single text); another is refused.
    with pytest.raises(ValueError, match="`token_type_ids` were given with segment id 1, but this model has no "
                                         "token-type embeddings"):
        model(input_ids=torch.ones(1, 3, dtype=torch.long), token_type_ids=torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="`type_vocab_size` must be a non-negative integer, got -1"):
        make_config(type_vocab_size=-1)


def test_without_token_type_ids_the_first_segment_is_assumed():
    model = MiniTransformerModel(make_config(type_vocab_size=2, embedding_layer_norm=True)).eval()
    input_ids = torch.randint(0, 99, (2, 6))
    with torch.no_grad():
        implicit = model(input_ids).last_hidden_state
        explicit = model(input_ids, token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
    torch.testing.assert_close(implicit, explicit, rtol=0, atol=0)


REMOTE_CODE = """
import torch, transformers
folder, expected = sys.argv[1], torch.load(sys.argv[2])
model = transformers.AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(**expected["batch"]).logits
print(type(model).__module__.split(".")[0], torch.equal(logits, expected["logits"]))
fill = transformers.pipeline("fill-mask", model=folder, trust_remote_code=True, top_k=3)
print([p["token_str"] for p in fill("the cat sits on the [MASK]")])
"""


@pytest.mark.slow
def test_converted_bert_loads_through_remote_code_without_the_package(bert_source, bert_converted, tmp_path,
                                                                     one_thread):
    folder, _ = bert_converted
    batch = pair_batch(AutoTokenizer.from_pretrained(folder))
    with torch.no_grad():
        logits = AutoModelForMaskedLM.from_pretrained(folder).eval()(**batch).logits
    expected = transformers.pipeline("fill-mask", model=str(bert_source), top_k=3)("the cat sits on the [MASK]")
    torch.save(dict(batch=batch, logits=logits), tmp_path / "expected.pt")
    result = run_python(REMOTE_CODE, tmp_path, str(folder), str(tmp_path / "expected.pt"))
    assert result.stdout.splitlines() == ["transformers_modules True", str([p["token_str"] for p in expected])]


@pytest.mark.slow  # a fresh interpreter: ~10 s
def test_the_readmes_fill_mask_lines_run_as_printed(bert_converted, tmp_path):
    # As a reader runs them: in a fresh process that has not imported the package, from a folder holding outputs/bert.
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "bert").symlink_to(bert_converted[0])
    result = run_python(readme_block('pipeline("fill-mask", model="outputs/bert"', "python"), tmp_path)
    assert "'token_str':" in result.stdout and "'sequence':" in result.stdout

