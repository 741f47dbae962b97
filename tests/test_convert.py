"""scripts/convert.py and hf_minitransformer/conversion.py: Marian and GPT-2 checkpoints become MiniTransformer folders
that compute the same logits, hidden states (Marian's up to the permutation of the basis) and generations.

The sources are built here with transformers itself (tiny sizes, trained a few steps so that no weight keeps its
symmetric initial value) with real tokenizers trained locally: sentencepiece for Marian, byte-level BPE for GPT-2.
Nothing reaches the Hub.
"""

import contextlib
import io
import json
import logging
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Model,
    MarianConfig,
    MarianMTModel,
)

from hf_minitransformer import MiniTransformerForCausalLM, MiniTransformerForSeq2SeqLM
from hf_minitransformer.conversion import compare_models, conversion_is_exact, convert_config, convert_model
from hf_minitransformer.conversion import marian_permutation as permutation

from .conftest import load_script, run_python, run_script


sentencepiece = pytest.importorskip("sentencepiece", reason="Marian tokenizers need the `convert` extra")
convert_script = load_script("convert")

ENGLISH = [
    "the cat sits on the mat", "the dog runs in the park", "a bird sings in the tree", "the sun is warm today",
    "where is the train station", "i like green tea with milk", "the children play in the garden",
    "my brother reads a long book", "the weather is nice today", "we walk to the river at night",
    "she writes a letter to her friend", "the old man sleeps in the chair",
]
GERMAN = [
    "die katze sitzt auf der matte", "der hund rennt im park", "ein vogel singt im baum", "die sonne ist heute warm",
    "wo ist der bahnhof", "ich mag grünen tee mit milch", "die kinder spielen im garten",
    "mein bruder liest ein langes buch", "das wetter ist heute schön", "wir gehen nachts zum fluss",
    "sie schreibt einem freund einen brief", "der alte mann schläft im stuhl",
]
SIZES = dict(hidden=32, layers=2, heads=4, ffn=37, positions=64)
LICENSE = "cc-by-4.0"


def train_a_few_steps(model, batches: list[dict], steps: int = 8):
    """A few Adam steps on a real loss, so LayerNorms, biases and embeddings all move away from their init."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        optimizer.zero_grad()
        model(**batches[step % len(batches)]).loss.backward()
        optimizer.step()
    return model.eval()


def train_sentencepiece(lines: list[str], prefix: Path) -> Path:
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(prefix), vocab_size=60, model_type="unigram",
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
    )
    return prefix.with_suffix(".model")


def marian_tokenizer(workdir: Path) -> transformers.MarianTokenizer:
    """A real MarianTokenizer: two sentencepiece models and one vocabulary, laid out as opus-mt's (eos 0, pad last)."""
    source_spm = train_sentencepiece(ENGLISH, workdir / "source")
    target_spm = train_sentencepiece(GERMAN, workdir / "target")
    pieces = []
    for spm in (source_spm, target_spm):
        processor = sentencepiece.SentencePieceProcessor(model_file=str(spm))
        pieces += [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    vocab = {"</s>": 0, "<unk>": 1}
    for piece in pieces:
        if piece not in vocab and piece not in ("<s>", "</s>", "<unk>"):
            vocab[piece] = len(vocab)
    vocab["<pad>"] = len(vocab)
    (workdir / "vocab.json").write_text(json.dumps(vocab))
    return transformers.MarianTokenizer(str(source_spm), str(target_spm), str(workdir / "vocab.json"))


def write_card(folder: Path):
    (folder / "README.md").write_text(f"---\nlicense: {LICENSE}\n---\n\n# A tiny test checkpoint\n")


@pytest.fixture(scope="module")
def marian_source(tmp_path_factory) -> Path:
    """A trained tiny MarianMTModel with its tokenizer, opus-mt's generation defaults and a card with a license."""
    folder = tmp_path_factory.mktemp("marian-source")
    tokenizer = marian_tokenizer(tmp_path_factory.mktemp("spm"))
    pad = tokenizer.pad_token_id
    torch.manual_seed(0)
    config = MarianConfig(
        vocab_size=len(tokenizer), d_model=SIZES["hidden"], encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=SIZES["heads"], decoder_attention_heads=SIZES["heads"], encoder_ffn_dim=SIZES["ffn"],
        decoder_ffn_dim=SIZES["ffn"], max_position_embeddings=SIZES["positions"], pad_token_id=pad,
        decoder_start_token_id=pad, eos_token_id=0, forced_eos_token_id=0, scale_embedding=True,
        activation_function="swish",
    )
    model = MarianMTModel(config)
    batches = [dict(tokenizer(ENGLISH[i:i + 4], text_target=GERMAN[i:i + 4], padding=True, return_tensors="pt"))
               for i in range(0, len(ENGLISH), 4)]
    train_a_few_steps(model, batches)
    with torch.no_grad():
        model.final_logits_bias.normal_(0.0, 0.5)  # a buffer training leaves at 0: make it count
    model.generation_config.update(num_beams=4, max_length=24, bad_words_ids=[[pad]])
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_card(folder)
    return folder


def gpt2_tokenizer() -> transformers.PreTrainedTokenizerFast:
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(ENGLISH, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )


@pytest.fixture(scope="module")
def gpt2_source(tmp_path_factory) -> Path:
    """A trained tiny GPT2LMHeadModel with a byte-level BPE tokenizer."""
    folder = tmp_path_factory.mktemp("gpt2-source")
    tokenizer = gpt2_tokenizer()
    torch.manual_seed(0)
    eos = tokenizer.eos_token_id
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=SIZES["hidden"], n_layer=2, n_head=SIZES["heads"],
                        n_inner=SIZES["ffn"], n_positions=SIZES["positions"], bos_token_id=eos, eos_token_id=eos)
    model = GPT2LMHeadModel(config)
    batches = []
    for i in range(0, len(ENGLISH), 4):
        ids = [tokenizer(text)["input_ids"] for text in ENGLISH[i:i + 4]]
        length = min(len(x) for x in ids)
        input_ids = torch.tensor([x[:length] for x in ids])
        batches.append(dict(input_ids=input_ids, labels=input_ids))
    train_a_few_steps(model, batches)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_card(folder)
    return folder


def run_convert(*argv: str) -> str:
    """scripts/convert.py in-process; returns what it printed, then the warnings transformers logged and the Python
    warnings raised meanwhile (a user sees them all)."""
    printed = io.StringIO()
    handler = logging.StreamHandler(printed)
    handler.setLevel(logging.WARNING)
    transformers.logging.add_handler(handler)
    try:
        with contextlib.redirect_stdout(printed), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            convert_script.main(list(argv))
    finally:
        transformers.logging.remove_handler(handler)
    return printed.getvalue() + "".join(f"{warning.category.__name__}: {warning.message}\n" for warning in caught)


@pytest.fixture(scope="module")
def marian_converted(marian_source, tmp_path_factory) -> tuple[Path, str]:
    output = tmp_path_factory.mktemp("converted") / "opus-tiny"
    return output, run_convert(str(marian_source), str(output), "--max_new_tokens", "10")


@pytest.fixture(scope="module")
def gpt2_converted(gpt2_source, tmp_path_factory) -> tuple[Path, str]:
    output = tmp_path_factory.mktemp("converted") / "gpt2-tiny"
    return output, run_convert(str(gpt2_source), str(output), "--max_new_tokens", "10")


def marian_batch(tokenizer) -> dict[str, torch.Tensor]:
    """Source and target side of the sample sentences, padded; decoder inputs are the labels shifted right."""
    return dict(tokenizer(ENGLISH[:5], text_target=GERMAN[:5], padding=True, return_tensors="pt"))


def max_logit_difference(ours: torch.Tensor, theirs: torch.Tensor, keep: torch.Tensor | None = None) -> float:
    difference = (ours - theirs).abs()
    return (difference if keep is None else difference[keep.bool()]).max().item()


def test_marian_folder_computes_what_the_source_computes(marian_source, marian_converted):
    folder, printed = marian_converted
    print(printed)  # the script's figures, shown with `pytest -s`
    assert "logits max abs diff" in printed and "beam-4 generate, identical sequences: 5/5" in printed
    source = MarianMTModel.from_pretrained(marian_source).eval()
    converted = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    assert isinstance(converted, MiniTransformerForSeq2SeqLM)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = marian_batch(tokenizer)
    with torch.no_grad():
        theirs = source(**batch, output_hidden_states=True)
        ours = converted(**batch, output_hidden_states=True)
    difference = max_logit_difference(ours.logits, theirs.logits)
    print(f"Marian: logits max abs diff {difference:.3g}")
    assert difference <= 1e-4
    assert torch.equal(ours.logits.argmax(-1), theirs.logits.argmax(-1))
    torch.testing.assert_close(ours.loss, theirs.loss, rtol=0, atol=1e-5)
    # Hidden states are Marian's, up to the fixed permutation of the residual basis (conversion.py's docstring).
    perm = permutation(SIZES["hidden"])
    for mine, reference in zip(ours.encoder_hidden_states + ours.decoder_hidden_states,
                               theirs.encoder_hidden_states + theirs.decoder_hidden_states, strict=True):
        torch.testing.assert_close(mine, reference[..., perm], rtol=0, atol=1e-5)
    # Generation with the folder's defaults (beam 4, bad words, max length) and greedy.
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    for options in (dict(), dict(num_beams=1, max_new_tokens=8)):
        expected = source.generate(**inputs, **options)
        assert torch.equal(converted.generate(**inputs, **options), expected), options
    assert (expected != tokenizer.pad_token_id)[:, 1:].any()  # not an empty translation


def test_marian_folder_carries_tokenizer_generation_defaults_and_card(marian_source, marian_converted):
    folder, _ = marian_converted
    source_tokenizer, tokenizer = AutoTokenizer.from_pretrained(marian_source), AutoTokenizer.from_pretrained(folder)
    assert type(tokenizer).__name__ == "MarianTokenizer"
    assert tokenizer(ENGLISH, text_target=GERMAN)["labels"] == source_tokenizer(ENGLISH, text_target=GERMAN)["labels"]
    generation = json.loads((folder / "generation_config.json").read_text())
    pad = tokenizer.pad_token_id
    assert generation["num_beams"] == 4 and generation["max_length"] == 24
    assert generation["bad_words_ids"] == [[pad]] and generation["decoder_start_token_id"] == pad
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSeq2SeqLM"].endswith("MiniTransformerForSeq2SeqLM")
    assert {"modeling_minitransformer.py", "configuration_minitransformer.py"} <= {p.name for p in folder.iterdir()}
    assert "conversion.py" not in {p.name for p in folder.iterdir()}  # not part of the model's code
    card = (folder / "README.md").read_text()
    assert f"license: {LICENSE}" in card and str(marian_source) in card and "**converted**" in card
    assert not list(folder.parent.glob(".*partial*"))  # the temporary folder was renamed, not left behind


def test_marian_translation_pipeline_of_the_folder_translates_as_the_source(marian_source, marian_converted):
    folder, _ = marian_converted
    source = MarianMTModel.from_pretrained(marian_source).eval()
    tokenizer = AutoTokenizer.from_pretrained(marian_source)
    inputs = tokenizer(ENGLISH[:3], padding=True, return_tensors="pt")
    expected = tokenizer.batch_decode(source.generate(**inputs), skip_special_tokens=True)
    translator = transformers.pipeline("translation", model=str(folder), trust_remote_code=True)
    assert [out[0]["translation_text"] for out in translator(ENGLISH[:3])] == expected


def test_converted_marian_matches_the_reference_equations_in_float64(marian_source):
    from .test_reference import reference_seq2seq

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        source = MarianMTModel.from_pretrained(marian_source, dtype=torch.float64).eval()
        converted, _ = convert_model(source)
    finally:
        torch.set_default_dtype(previous)
    assert converted.dtype == torch.float64
    weights = dict(converted.state_dict())  # the reference reads the weights by name
    vocab_size = converted.config.vocab_size
    source_ids, decoder_ids = torch.randint(0, vocab_size, (9,)), torch.randint(0, vocab_size, (6,))
    with torch.no_grad():
        ours = converted(input_ids=source_ids[None], decoder_input_ids=decoder_ids[None])
        theirs = source(input_ids=source_ids[None], decoder_input_ids=decoder_ids[None])
    memory, _, logits = reference_seq2seq(weights, converted.config, source_ids, decoder_ids)
    torch.testing.assert_close(ours.encoder_last_hidden_state[0], memory, rtol=0, atol=1e-10)
    torch.testing.assert_close(ours.logits[0], logits, rtol=0, atol=1e-10)
    # Marian builds its sinusoidal table in float32, so in float64 it agrees with the exact equations to ~1e-7 only.
    torch.testing.assert_close(theirs.logits[0], logits, rtol=0, atol=1e-5)


def gpt2_batch(tokenizer) -> dict[str, torch.Tensor]:
    """Sample sentences, left-padded with eos as GPT-2 batches are for generation."""
    ids = [tokenizer(text)["input_ids"] for text in ENGLISH[:4]]
    length = max(len(x) for x in ids)
    pad = tokenizer.eos_token_id
    input_ids = torch.tensor([[pad] * (length - len(x)) + x for x in ids])
    attention_mask = torch.tensor([[0] * (length - len(x)) + [1] * len(x) for x in ids])
    return dict(input_ids=input_ids, attention_mask=attention_mask)


def test_gpt2_folder_computes_what_the_source_computes(gpt2_source, gpt2_converted):
    folder, printed = gpt2_converted
    print(printed)
    assert "greedy generate, identical sequences: 5/5" in printed
    source = GPT2LMHeadModel.from_pretrained(gpt2_source).eval()
    converted = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert isinstance(converted, MiniTransformerForCausalLM)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = gpt2_batch(tokenizer)
    assert len(set(batch["attention_mask"].sum(-1).tolist())) > 1  # padding is really exercised
    with torch.no_grad():
        theirs = source(**batch, output_hidden_states=True)
        ours = converted(**batch, output_hidden_states=True)
    keep = batch["attention_mask"]
    difference = max_logit_difference(ours.logits, theirs.logits, keep)
    print(f"GPT-2: logits max abs diff {difference:.3g}")
    assert difference <= 1e-4
    assert torch.equal(ours.logits.argmax(-1)[keep.bool()], theirs.logits.argmax(-1)[keep.bool()])
    for mine, reference in zip(ours.hidden_states, theirs.hidden_states, strict=True):
        torch.testing.assert_close(mine[keep.bool()], reference[keep.bool()], rtol=0, atol=1e-5)
    for num_beams in (1, 4):
        options = dict(num_beams=num_beams, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        assert torch.equal(converted.generate(**batch, **options), source.generate(**batch, **options))
    generator = transformers.pipeline("text-generation", model=str(folder))
    reference = transformers.pipeline("text-generation", model=str(gpt2_source))
    options = dict(max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert generator("the cat", **options) == reference("the cat", **options)
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.eos_token_id
    assert "license: cc-by-4.0" in (folder / "README.md").read_text()


def test_gpt2_model_without_head_becomes_a_causal_lm_with_the_tied_projection(gpt2_source, tmp_path):
    body = GPT2LMHeadModel.from_pretrained(gpt2_source).transformer
    body.save_pretrained(tmp_path / "body")
    AutoTokenizer.from_pretrained(gpt2_source).save_pretrained(tmp_path / "body")
    printed = run_convert(str(tmp_path / "body"), str(tmp_path / "out"), "--max_new_tokens", "4")
    assert "beam-4 generate, identical sequences: 5/5" in printed
    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    input_ids = torch.randint(0, body.config.vocab_size, (2, 10))
    with torch.no_grad():
        hidden = GPT2Model.from_pretrained(tmp_path / "body")(input_ids).last_hidden_state
        ours = converted(input_ids, output_hidden_states=True)
    torch.testing.assert_close(ours.hidden_states[-1], hidden, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.logits, hidden @ body.wte.weight.T, rtol=0, atol=1e-4)


def tiny_marian(**overrides) -> MarianMTModel:
    config = dict(vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=64,
                  pad_token_id=98, decoder_start_token_id=98, scale_embedding=True)
    return MarianMTModel(MarianConfig(**{**config, **overrides})).eval()


def tiny_gpt2(**overrides) -> GPT2LMHeadModel:
    config = dict(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2)
    return GPT2LMHeadModel(GPT2Config(**{**config, **overrides})).eval()


def tiny_bert() -> transformers.BertForMaskedLM:
    config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=37, max_position_embeddings=64)
    return transformers.BertForMaskedLM(config).eval()


RANDOM_SOURCES = {
    "marian": tiny_marian,
    "marian_relu_unscaled": lambda: tiny_marian(activation_function="relu", scale_embedding=False, decoder_layers=3),
    "gpt2": tiny_gpt2,
    "gpt2_untied_relu": lambda: tiny_gpt2(tie_word_embeddings=False, activation_function="relu"),
}


@pytest.mark.parametrize("name", sorted(RANDOM_SOURCES))
def test_freshly_initialised_sources_convert_exactly(name):
    source = RANDOM_SOURCES[name]()
    converted, _ = convert_model(source)
    ids = torch.randint(0, 99, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    batch = dict(input_ids=ids, attention_mask=mask)
    if source.config.is_encoder_decoder:
        batch["decoder_input_ids"] = torch.randint(0, 99, (2, 7))
    # Generation is compared on the trained checkpoints, through the script; here the logits and hidden states.
    figures = compare_models(source, converted, [batch], prompts=[])
    assert conversion_is_exact(figures), figures
    assert figures["logits_max_abs_diff"] <= 1e-5 and figures["hidden_states_max_abs_diff"] <= 1e-5


REFUSED = [
    ("marian", dict(normalize_before=True), "normalize_before=True"),
    ("marian", dict(share_encoder_decoder_embeddings=False), "share_encoder_decoder_embeddings=False"),
    ("marian", dict(tie_word_embeddings=False), "tie_word_embeddings=False"),
    ("marian", dict(activation_function="gelu_fast"), "activation_function='gelu_fast'"),
    ("marian", dict(decoder_attention_heads=2), "decoder_attention_heads=2"),
    ("marian", dict(decoder_ffn_dim=64), "decoder_ffn_dim=64"),
    ("gpt2", dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx=True"),
    ("gpt2", dict(scale_attn_weights=False), "scale_attn_weights=False"),
    ("gpt2", dict(activation_function="gelu_pytorch_tanh"), "activation_function='gelu_pytorch_tanh'"),
    ("gpt2", dict(add_cross_attention=True), "add_cross_attention=True"),
]


@pytest.mark.parametrize("family, overrides, message", REFUSED, ids=[message for *_, message in REFUSED])
def test_what_cannot_be_converted_exactly_is_refused_by_name(family, overrides, message):
    base = dict(vocab_size=99, d_model=32) if family == "marian" else dict(vocab_size=99, n_embd=32)
    config = (MarianConfig if family == "marian" else GPT2Config)(**base, **overrides)
    with pytest.raises(ValueError, match=f"`{message}`"):
        convert_config(config)


def test_unknown_families_are_refused():
    with pytest.raises(ValueError, match="model_type='t5'.*supported: 'marian', 'gpt2'"):
        convert_config(transformers.T5Config())


def test_a_marian_checkpoint_with_non_sinusoidal_positions_is_refused():
    source = tiny_marian()
    with torch.no_grad():
        source.get_decoder().embed_positions.weight[3, 5] += 0.01
    with pytest.raises(ValueError, match="decoder.embed_positions.weight differs from the sinusoidal table"):
        convert_model(source)


def test_the_script_refuses_before_loading_weights_or_writing(tmp_path):
    # A config alone: the refusal must come before the (missing) weights are ever looked for.
    MarianConfig(vocab_size=99, d_model=32, normalize_before=True).save_pretrained(tmp_path / "source")
    with pytest.raises(ValueError, match="`normalize_before=True`"):
        run_convert(str(tmp_path / "source"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    (tmp_path / "taken").mkdir()
    with pytest.raises(ValueError, match="already exists; pass --overwrite"):
        run_convert(str(tmp_path / "source"), str(tmp_path / "taken"))


def test_the_script_writes_nothing_when_the_converted_model_differs(gpt2_source, tmp_path, monkeypatch):
    def slightly_wrong(source):
        converted, notes = convert_model(source)
        with torch.no_grad():
            converted.base_model.final_layer_norm.bias[0] += 1e-3  # a conversion bug of this size
        return converted, notes

    monkeypatch.setattr(convert_script, "convert_model", slightly_wrong)
    with pytest.raises(convert_script.ConversionMismatchError, match="Nothing was written"):
        run_convert(str(gpt2_source), str(tmp_path / "out"), "--max_new_tokens", "4")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_a_folder_the_conversion_wrote(gpt2_source, gpt2_converted, tmp_path):
    shutil.copytree(gpt2_converted[0], tmp_path / "out")
    record = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert record["source"] == str(gpt2_source)
    assert set(record["files"]) == {p.name for p in (tmp_path / "out").iterdir()} - {"conversion.json"}
    assert {"model.safetensors", "tokenizer.json", "config.json", "README.md"} <= set(record["files"])
    run_convert(str(gpt2_source), str(tmp_path / "out"), "--overwrite", "--max_new_tokens", "4")
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the earlier folder went, nothing is left aside


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_never_replaces_the_source_or_a_folder_it_did_not_write(gpt2_source, gpt2_converted, tmp_path):
    # The case: `convert.py SRC PARENT_OF_SRC --overwrite` deleted the source and its neighbours, exit 0.
    parent = tmp_path / "checkpoints"
    shutil.copytree(gpt2_source, parent / "gpt2")
    (parent / "notes.txt").write_text("mine")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "stale.txt").write_text("old")
    # A converted folder that has gained a file, or whose file changed, is no longer only what the conversion wrote.
    shutil.copytree(gpt2_converted[0], tmp_path / "grown")
    (tmp_path / "grown" / "my_eval.json").write_text("{}")
    shutil.copytree(gpt2_converted[0], tmp_path / "edited")
    (tmp_path / "edited" / "README.md").write_text("my own card")
    before = tree(tmp_path)
    for output, message in [
        (parent, r"--overwrite would replace '.*checkpoints', which holds the source '.*gpt2'; choose another "
                 "OUTPUT_DIR"),
        (parent / "gpt2", "which holds the source"),
        (tmp_path / "mine", r"--overwrite replaces only a folder that convert.py wrote, unchanged since, and "
                            r"'.*mine' is not one: it has no conversion.json\. Remove it yourself"),
        (tmp_path / "grown", "it holds my_eval.json, which conversion.json does not list"),
        (tmp_path / "edited", r"README.md has \d+ bytes where \d+ were saved"),
    ]:
        with pytest.raises(ValueError, match=message):
            run_convert(str(parent / "gpt2"), str(output), "--overwrite")
    assert tree(tmp_path) == before  # nothing was touched


@pytest.mark.parametrize("family", ["bert", "gpt2", "marian"])
def test_a_checkpoint_without_tokenizer_files_converts_without_a_tokenizer_and_says_so(family, tmp_path):
    # transformers' AutoTokenizer does not fail on such a folder: it made up a 5-token BERT tokenizer (written into
    # the folder) and one GPT-2 and Marian could not use (the conversion crashed).
    source = {"bert": tiny_bert, "gpt2": tiny_gpt2, "marian": tiny_marian}[family]()
    source.save_pretrained(tmp_path / "source")
    printed = run_convert(str(tmp_path / "source"), str(tmp_path / "out"), "--max_new_tokens", "4")
    source_name, output_name = tmp_path / "source", tmp_path / "out"
    assert f"note: {source_name} has no tokenizer files (none of tokenizer.json, tokenizer_config.json" in printed
    assert printed.rstrip().endswith(f"Wrote {output_name}, without a tokenizer: {source_name} has none")
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert "model.safetensors" in written and not written & set(convert_script.TOKENIZER_FILES)


def test_tokenizer_files_that_do_not_load_are_refused(gpt2_source, tmp_path):
    shutil.copytree(gpt2_source, tmp_path / "source")
    (tmp_path / "source" / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"'s tokenizer \(tokenizer.json, tokenizer_config.json\) does not load: "):
        run_convert(str(tmp_path / "source"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_the_saved_tokenizer_truncates_to_the_models_positions(gpt2_source, gpt2_converted):
    # Built without a limit, the source's tokenizer says model_max_length 1e30: `truncation=True` would cut nothing.
    assert AutoTokenizer.from_pretrained(gpt2_source).model_max_length > 1e20
    tokenizer = AutoTokenizer.from_pretrained(gpt2_converted[0])
    assert tokenizer.model_max_length == SIZES["positions"]
    assert len(tokenizer(" ".join(ENGLISH * 3), truncation=True)["input_ids"]) == SIZES["positions"]


def test_the_marian_conversion_prints_no_library_warning(marian_converted):
    # It printed "Both `max_new_tokens` (=10) and `max_length`(=24) seem to have been set" for each of its 8 checked
    # generations, and MarianTokenizer's "Recommended: pip install sacremoses." (the convert extra now has it).
    _, printed = marian_converted
    assert "seem to have been set" not in printed and "sacremoses" not in printed
    assert "Warning" not in printed and "warning" not in printed.lower()


def write_source(folder: Path, kind: str) -> Path:
    """A source folder that cannot be converted: an unsupported family (config only), or truncated weights."""
    if kind in ("bart", "t5", "llama"):
        config_class = {"bart": transformers.BartConfig, "t5": transformers.T5Config,
                        "llama": transformers.LlamaConfig}[kind]
        config_class(vocab_size=99).save_pretrained(folder)
    else:
        tiny_gpt2().save_pretrained(folder)
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return folder


@pytest.mark.parametrize(("setup", "extra", "message"), [
    (None, [], r"SOURCE '.*missing' does not exist \(and a Hub model id is 'name' or 'owner/name'\)"),
    ("bart", [], "Cannot convert model_type='bart'; supported: 'marian', 'gpt2', 'bert'"),
    ("t5", [], "Cannot convert model_type='t5'"),
    ("llama", [], "Cannot convert model_type='llama'"),
    ("truncated", [], r"'s weights do not load \(Error while deserializing header: .*\): the file is truncated or "
                      "damaged"),
    ("empty", [], "is a folder without config.json: not a transformers checkpoint"),
    ("unreadable", [], r"SOURCE '.*missing': its config.json does not load \(It looks like the config file at"),
    ("truncated", ["--max_new_tokens", "60"], r"--max_new_tokens must lie in \[1, 52\]"),
])
def test_bad_input_is_one_message_before_anything_is_written(tmp_path, setup, extra, message):
    source = tmp_path / "missing"
    if setup in ("empty", "unreadable"):
        source.mkdir()
        if setup == "unreadable":
            (source / "config.json").write_text('{"model_type": "gpt2", ')
    elif setup is not None:
        write_source(source, setup)
    with pytest.raises(ValueError, match=message):
        run_convert(str(source), str(tmp_path / "out"), *extra)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_a_hub_id_that_cannot_be_reached_offline_is_one_message(tmp_path):
    with pytest.raises(ValueError, match=r"SOURCE 'no-such-owner/no-such-model' is neither a local folder nor a Hub "
                                         r"model that can be reached \(.+\)\.$"):
        run_convert("no-such-owner/no-such-model", str(tmp_path / "out"))


def test_output_paths_that_cannot_be_a_folder_are_refused(gpt2_source, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"OUTPUT_DIR '.*file' is a file; give the path of a folder to write"):
        run_convert(str(gpt2_source), str(tmp_path / "file"), "--overwrite")
    with pytest.raises(ValueError, match=r"OUTPUT_DIR '.*file/out' cannot be created: '.*file' is a file"):
        run_convert(str(gpt2_source), str(tmp_path / "file" / "out"))
    assert (tmp_path / "file").read_text() == "x"


def test_max_new_tokens_below_one_is_refused_when_parsed(capsys):
    with pytest.raises(SystemExit) as exit_info:
        convert_script.parse_args(["gpt2", "out", "--max_new_tokens", "0"])
    assert exit_info.value.code == 2
    message = "error: --max_new_tokens must be at least 1, got 0"
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message)


@pytest.mark.slow  # a fresh interpreter: ~10 s
def test_the_command_line_prints_one_error_line_and_exits_1(tmp_path):
    write_source(tmp_path / "bart", "bart")
    result = run_script(tmp_path, "convert.py", str(tmp_path / "bart"), str(tmp_path / "out"), timeout=120,
                        check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: Cannot convert model_type='bart'; supported: 'marian', 'gpt2', 'bert'.")


REMOTE_CODE = """
import torch, transformers
marian, gpt2, expected = sys.argv[1], sys.argv[2], torch.load(sys.argv[3])
model = transformers.AutoModelForSeq2SeqLM.from_pretrained(marian, trust_remote_code=True).eval()
tokenizer = transformers.AutoTokenizer.from_pretrained(marian, trust_remote_code=True)
batch = tokenizer(expected["sentences"], padding=True, return_tensors="pt")
with torch.no_grad():
    logits = model(**batch, decoder_input_ids=expected["decoder_input_ids"]).logits
print("marian", type(model).__module__.split(".")[0], torch.equal(logits, expected["marian_logits"]))
translator = transformers.pipeline("translation", model=marian, trust_remote_code=True)
print("translation", [out[0]["translation_text"] for out in translator(expected["sentences"])])
model = transformers.AutoModelForCausalLM.from_pretrained(gpt2, trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(expected["gpt2_ids"]).logits
print("gpt2", type(model).__module__.split(".")[0], torch.equal(logits, expected["gpt2_logits"]))
"""


@pytest.mark.slow
def test_converted_folders_load_through_remote_code_without_the_package(
    marian_source, marian_converted, gpt2_converted, tmp_path, one_thread
):
    marian_folder, gpt2_folder = marian_converted[0], gpt2_converted[0]
    sentences = ENGLISH[:3]
    tokenizer = AutoTokenizer.from_pretrained(marian_folder)
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    decoder_input_ids = torch.randint(0, len(tokenizer), (3, 5))
    gpt2_ids = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        marian_logits = AutoModelForSeq2SeqLM.from_pretrained(marian_folder).eval()(
            **batch, decoder_input_ids=decoder_input_ids).logits
        gpt2_logits = AutoModelForCausalLM.from_pretrained(gpt2_folder).eval()(gpt2_ids).logits
    source = MarianMTModel.from_pretrained(marian_source).eval()
    translations = tokenizer.batch_decode(source.generate(**batch), skip_special_tokens=True)
    torch.save(dict(sentences=sentences, decoder_input_ids=decoder_input_ids, marian_logits=marian_logits,
                    gpt2_ids=gpt2_ids, gpt2_logits=gpt2_logits), tmp_path / "expected.pt")
    result = run_python(REMOTE_CODE, tmp_path, str(marian_folder), str(gpt2_folder), str(tmp_path / "expected.pt"))
    assert result.stdout.splitlines() == [
        "marian transformers_modules True",
        f"translation {translations}",
        "gpt2 transformers_modules True",
    ]
