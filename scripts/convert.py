#!/usr/bin/env python
"""Convert a Marian (opus-mt), GPT-2 or BERT checkpoint into a MiniTransformer folder that computes the same.

    python scripts/convert.py Helsinki-NLP/opus-mt-en-de outputs/opus-en-de
    python scripts/convert.py gpt2 outputs/gpt2
    python scripts/convert.py bert-base-uncased outputs/bert
    python scripts/convert.py path/to/a/local/checkpoint outputs/converted --overwrite

SOURCE is a Hub id or a local folder of a transformers `MarianMTModel`, `GPT2LMHeadModel`, `GPT2Model`,
`BertForMaskedLM` or `BertModel` checkpoint. A `GPT2Model` becomes a causal LM whose output projection is the tied
embedding matrix, as GPT2LMHeadModel loads it; a `BertModel` becomes a `MiniTransformerModel` (AutoModel).

Steps, each of which stops with a message saying what is wrong, before anything is written:
1. read the source config and refuse anything that cannot be converted exactly (hf_minitransformer/conversion.py);
2. load the source in float32, convert the weights;
3. run both models on sample inputs (the tokenizer's encoding of a few sentences, source and target side for Marian,
   sentence pairs for BERT, and random token ids with padding): float32 logits must agree to 1e-4 with the same
   argmax everywhere (a bare BertModel: its hidden states), and greedy and beam-4 `generate` must give the same tokens;
   print the figures;
4. write the folder under a temporary name, reload it with AutoModelFor... and check its logits equal the converted
   model's bit for bit, then rename it: safetensors, config.json with auto_map, the code files, the source's tokenizer
   (its model_max_length capped at the model's positions), generation_config.json with the source's generation
   defaults, a README.md model card naming the source, its license and the figures, and conversion.json (the source
   and every file written, with its size and sha256), written last.

`--overwrite` replaces only a folder that convert.py wrote and nobody changed since (its conversion.json lists every
file in it, unchanged), never one that holds the source or anything else. A checkpoint without tokenizer files is
converted without a tokenizer, and the script says so.
"""

import argparse
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BertForMaskedLM,
    BertModel,
    GPT2LMHeadModel,
    MarianMTModel,
)
from transformers.utils import has_file

import hf_minitransformer  # noqa: F401  (registers MiniTransformer with the Auto classes)
from hf_minitransformer.atomic_files import folder_renamed_into_place
from hf_minitransformer.conversion import compare_models, conversion_is_exact, convert_config, convert_model
from hf_minitransformer.manifest import write_folder_record, written_folder_problem


SAMPLE_SOURCES = [
    "The weather is nice today.",
    "Machine translation has improved a lot in the last ten years, thanks to attention.",
    "Where is the train station?",
]
SAMPLE_TARGETS = [
    "Das Wetter ist heute schön.",
    "Die maschinelle Übersetzung hat sich dank Aufmerksamkeit stark verbessert.",
    "Wo ist der Bahnhof?",
]
# What each kind of source becomes: the transformers class that loads it, our head, its Auto class and pipeline.
KINDS = {
    "marian": dict(source_class=MarianMTModel, head="MiniTransformerForSeq2SeqLM", auto_class=AutoModelForSeq2SeqLM,
                   pipeline_tag="translation"),
    "gpt2": dict(source_class=GPT2LMHeadModel, head="MiniTransformerForCausalLM", auto_class=AutoModelForCausalLM,
                 pipeline_tag="text-generation"),
    "bert-mlm": dict(source_class=BertForMaskedLM, head="MiniTransformerForMaskedLM", auto_class=AutoModelForMaskedLM,
                     pipeline_tag="fill-mask"),
    "bert": dict(source_class=BertModel, head="MiniTransformerModel", auto_class=AutoModel,
                 pipeline_tag="feature-extraction"),
}
# BERT checkpoints whose `architectures` carry the MLM head (the NSP head of BertForPreTraining is left out).
BERT_MLM_ARCHITECTURES = ("BertForMaskedLM", "BertForPreTraining")
ATOL = 1e-4
MIN_PROMPT = 12  # random-id prompts have this many tokens
RECORD = "conversion.json"  # written last into the folder: the source and every file written
# The files a tokenizer is read from, one of which every transformers tokenizer saves. Without any, AutoTokenizer in
# transformers 5.24 does not fail: it builds a made-up tokenizer from the config (5 tokens for a BERT checkpoint).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "merges.txt", "source.spm",
                   "spiece.model", "tokenizer.model", "sentencepiece.bpe.model")


class ConversionMismatchError(ValueError):
    """The converted model does not compute what the source computes; nothing was written."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="Hub id or local folder of a MarianMTModel, GPT2LMHeadModel, GPT2Model, "
                        "BertForMaskedLM or BertModel checkpoint.")
    parser.add_argument("output_dir", help="Folder to write; must not exist unless --overwrite.")
    parser.add_argument("--revision", default=None, help="Branch, tag or commit of a Hub source.")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace OUTPUT_DIR if it is a folder that convert.py wrote (its conversion.json lists "
                             "every file in it).")
    parser.add_argument("--max_new_tokens", type=int, default=20, help="Tokens each checked generation produces.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random-id sample inputs.")
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1:
        parser.error(f"--max_new_tokens must be at least 1, got {args.max_new_tokens}")
    return args


def main(argv: list[str] | None = None) -> Path:
    """Convert, check, write; returns the written folder."""
    args = parse_args(argv)
    output = Path(args.output_dir)
    check_output(output, args.source, args.overwrite)
    source_config = load_config(args.source, args.revision)
    convert_config(source_config)  # refuses what cannot be converted before any weight is downloaded or loaded
    most = source_config.max_position_embeddings - MIN_PROMPT
    if not 1 <= args.max_new_tokens <= most:
        raise ValueError(f"--max_new_tokens must lie in [1, {most}]: a {MIN_PROMPT}-token prompt and the new tokens "
                         f"must fit the model's {most + MIN_PROMPT} positions; got {args.max_new_tokens}.")
    family = kind_of(source_config)
    source = load_source(family["source_class"], args.source, args.revision)
    tokenizer = load_tokenizer(args.source, args.revision)

    target, notes = convert_model(source)
    if tokenizer is not None and tokenizer.model_max_length > target.config.max_position_embeddings:
        # Saved without a limit (1e30), `truncation=True` would cut nothing and a longer input fail in the model.
        tokenizer.model_max_length = target.config.max_position_embeddings
    for note in notes:
        print(f"note: {note}")
    batches, prompts = sample_inputs(source, tokenizer, args.seed, args.max_new_tokens)
    figures = compare_models(source, target, batches, prompts, max_new_tokens=args.max_new_tokens)
    print_figures(figures)
    if not conversion_is_exact(figures, atol=ATOL):
        raise ConversionMismatchError(
            f"The converted model does not reproduce {args.source} (needed: logits within {ATOL}, argmax agreement "
            f"1.0, identical generations); got {figures}. Nothing was written."
        )
    write_folder(output, target, tokenizer, family, card(args.source, args.revision, source, figures, family),
                 batches[0], overwrite=args.overwrite, record=dict(source=args.source, revision=args.revision))
    print(f"Wrote {output}" + ("" if tokenizer is not None else f", without a tokenizer: {args.source} has none"))
    return output


def check_output(output: Path, source: str, overwrite: bool):
    """Refuse, before any work, an OUTPUT_DIR that cannot be a folder, or that exists and may not be replaced: only a
    folder convert.py wrote, exactly as it wrote it, is replaced, and never one that holds the source."""
    if output.exists() and not output.is_dir():
        raise ValueError(f"OUTPUT_DIR {str(output)!r} is a file; give the path of a folder to write.")
    blocking = next(parent for parent in output.absolute().parents if parent.exists())
    if not blocking.is_dir():
        raise ValueError(f"OUTPUT_DIR {str(output)!r} cannot be created: {str(blocking)!r} is a file.")
    if not output.exists():
        return
    if not overwrite:
        raise ValueError(f"{str(output)!r} already exists; pass --overwrite to replace a folder convert.py wrote, or "
                         "choose another folder.")
    if Path(source).exists() and output.resolve() in (Path(source).resolve(), *Path(source).resolve().parents):
        raise ValueError(f"--overwrite would replace {str(output)!r}, which holds the source {source!r}; choose "
                         "another OUTPUT_DIR.")
    problem = written_folder_problem(output, RECORD)
    if problem is not None:
        raise ValueError(f"--overwrite replaces only a folder that convert.py wrote, unchanged since, and "
                         f"{str(output)!r} is not one: {problem}. Remove it yourself if it may go, or choose another "
                         "OUTPUT_DIR.")


def load_config(source: str, revision: str | None):
    """The source's config; a ValueError of one line when there is none to read."""
    if Path(source).is_file():
        raise ValueError(f"SOURCE {source!r} is a file; give a checkpoint folder or a Hub model id.")
    if Path(source).is_dir() and not (Path(source) / "config.json").is_file():
        raise ValueError(f"SOURCE {source!r} is a folder without config.json: not a transformers checkpoint.")
    if not Path(source).exists() and (source.startswith(("/", ".", "~")) or source.count("/") > 1):
        raise ValueError(f"SOURCE {source!r} does not exist (and a Hub model id is 'name' or 'owner/name').")
    try:
        return AutoConfig.from_pretrained(source, revision=revision)
    except OSError as error:
        problem = (": its config.json does not load" if Path(source).is_dir() else
                   " is neither a local folder nor a Hub model that can be reached")
        raise ValueError(f"SOURCE {source!r}{problem} ({first_line(error)}).") from None


def first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def kind_of(source_config) -> dict:
    if source_config.model_type != "bert":
        return KINDS[source_config.model_type]
    has_mlm_head = any(name in BERT_MLM_ARCHITECTURES for name in source_config.architectures or [])
    return KINDS["bert-mlm" if has_mlm_head else "bert"]


def load_source(source_class, source: str, revision: str | None):
    """The source in float32, eval mode; refuses a checkpoint that lacks weights (they would be random)."""
    try:
        model, info = source_class.from_pretrained(source, revision=revision, dtype=torch.float32,
                                                   output_loading_info=True)
    except SafetensorError as error:
        raise ValueError(f"{source}'s weights do not load ({error}): the file is truncated or damaged; download "
                         "or copy it again.") from None
    except OSError as error:
        raise ValueError(f"{source} has no weights that load ({first_line(error)}).") from None
    if info["missing_keys"]:
        raise ValueError(f"{source} lacks weights {sorted(info['missing_keys'])}: a {source_class.__name__} loaded "
                         "from it would be partly random, so there is nothing exact to convert.")
    return model.eval()


def load_tokenizer(source: str, revision: str | None):
    """The source's tokenizer, or None (with a note) when the checkpoint has no tokenizer files; told by the files,
    since AutoTokenizer makes one up rather than fail. Tokenizer files that do not load are refused."""
    present = [name for name in TOKENIZER_FILES if has_file(source, name, revision=revision)]
    if not present:
        print(f"note: {source} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}); checking on random "
              "token ids only, and the folder will have no tokenizer.")
        return None
    try:
        return AutoTokenizer.from_pretrained(source, revision=revision)
    except (OSError, ValueError, ImportError) as error:
        raise ValueError(f"{source}'s tokenizer ({', '.join(present)}) does not load: {first_line(error)}. A Marian "
                         "tokenizer needs the convert extra (pip install -e '.[convert]').") from None


def sample_inputs(source, tokenizer, seed: int, max_new_tokens: int) -> tuple[list[dict], list[dict]]:
    """Forward batches and generation prompts: the sample sentences through the tokenizer, and random token ids with
    padding (right padding for Marian sources, left padding for GPT-2 prompts, as each is used). Prompts are cut so
    that prompt and generated tokens fit the positions the model has."""
    config = source.config
    room = config.max_position_embeddings - max_new_tokens
    generator = torch.Generator().manual_seed(seed)
    random_ids = torch.randint(0, config.vocab_size, (2, MIN_PROMPT), generator=generator)
    mask = torch.ones_like(random_ids)
    if config.model_type == "marian":
        mask[1, 8:] = 0
        random_batch = dict(input_ids=random_ids, attention_mask=mask,
                            decoder_input_ids=torch.randint(0, config.vocab_size, (2, 9), generator=generator))
        batches, prompts = [random_batch], [dict(input_ids=random_ids, attention_mask=mask)]
        if tokenizer is not None:
            encoded = tokenizer(SAMPLE_SOURCES, text_target=SAMPLE_TARGETS, padding=True, truncation=True,
                                max_length=room, return_tensors="pt")
            decoder_input_ids = source.prepare_decoder_input_ids_from_labels(encoded["labels"])
            batches.append(dict(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"],
                                decoder_input_ids=decoder_input_ids))
            prompts.append(dict(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]))
        return batches, prompts
    if config.model_type == "bert":
        mask[1, 8:] = 0
        token_type_ids = (torch.arange(MIN_PROMPT) >= 5).long().expand(2, -1)  # a second segment from position 5
        batches = [dict(input_ids=random_ids, attention_mask=mask, token_type_ids=token_type_ids)]
        if tokenizer is not None:
            for pair in (dict(text=SAMPLE_SOURCES), dict(text=SAMPLE_SOURCES, text_pair=SAMPLE_SOURCES[::-1])):
                encoded = tokenizer(**pair, padding=True, truncation=True, max_length=config.max_position_embeddings,
                                    return_tensors="pt")
                batches.append(dict(encoded))
        return batches, []
    mask[1, :4] = 0  # left padding
    pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
    batches = [dict(input_ids=random_ids, attention_mask=mask)]
    prompts = [dict(input_ids=random_ids, attention_mask=mask, pad_token_id=pad)]
    if tokenizer is not None:  # GPT-2's tokenizer has no pad token: the sentences are left-padded here
        encoded = [tokenizer(text, truncation=True, max_length=room)["input_ids"] for text in SAMPLE_SOURCES]
        longest = max(len(ids) for ids in encoded)
        input_ids = torch.tensor([[pad] * (longest - len(ids)) + ids for ids in encoded])
        attention_mask = torch.tensor([[0] * (longest - len(ids)) + [1] * len(ids) for ids in encoded])
        batches.append(dict(input_ids=input_ids, attention_mask=attention_mask))
        prompts.append(dict(input_ids=input_ids, attention_mask=attention_mask, pad_token_id=pad))
    return batches, prompts


def print_figures(figures: dict):
    if "logits_max_abs_diff" in figures:
        print(f"logits max abs diff (float32): {figures['logits_max_abs_diff']:.3g} (allowed {ATOL})")
    print(f"hidden states max abs diff: {figures['hidden_states_max_abs_diff']:.3g}")
    if "argmax_agreement" in figures:
        print(f"same argmax: {figures['argmax_agreement']:.4f} of {figures['positions']} positions")
    if "greedy_identical_sequences" in figures:
        print(f"greedy generate, identical sequences: {figures['greedy_identical_sequences']}")
        print(f"beam-4 generate, identical sequences: {figures['beam4_identical_sequences']}")


def source_license(source: str, revision: str | None) -> str | None:
    """The `license` field of the source's model card (README.md), if it has one."""
    local = Path(source) / "README.md"
    try:
        source_card = ModelCard.load(local) if local.is_file() else ModelCard.load(source, revision=revision)
    except Exception:  # no card, offline, or unparsable: the card then says the license is unknown
        return None
    return source_card.data.to_dict().get("license")


def card(source: str, revision: str | None, model, figures: dict, family: dict) -> ModelCard:
    license_id = source_license(source, revision)
    auto = family["auto_class"].__name__
    local = Path(source).exists()
    rows = [("logits, max abs difference", "logits_max_abs_diff", "{:.3g}"),
            ("hidden states, max abs difference", "hidden_states_max_abs_diff", "{:.3g}"),
            ("same argmax", "argmax_agreement", "{:.4f} of " + str(figures["positions"]) + " positions"),
            ("greedy `generate`, identical sequences", "greedy_identical_sequences", "{}"),
            ("beam-4 `generate`, identical sequences", "beam4_identical_sequences", "{}")]
    table = "\n".join(f"| {label} | {form.format(figures[key])} |" for label, key, form in rows if key in figures)
    data = ModelCardData(
        license=license_id or "other",
        base_model=None if local else source,
        library_name="transformers",
        pipeline_tag=family["pipeline_tag"],
        tags=["minitransformer", "converted", model.config.model_type],
    )
    source_ref = f"`{source}`" if local else f"[`{source}`](https://huggingface.co/{source})"
    basis_line = ("\nHidden states equal the source's with their d_model coordinates permuted: Marian lays out its "
                  "sinusoidal table\nsines first, this model interleaves sines and cosines "
                  "(hf_minitransformer/conversion.py).\n" if model.config.model_type == "marian" else "")
    license_line = (f"The source's card gives the license `{license_id}`, which applies to these weights."
                    if license_id else "The source's card states no license: check the source's terms before use.")
    content = f"""---
{data.to_yaml()}
---

# {Path(source).name} as MiniTransformer

These weights are **converted** from {source_ref}{f" (revision `{revision}`)" if revision else ""}, a transformers
`{type(model).__name__}` checkpoint, into a {family["head"]} (the classic Transformer written as a
transformers model by the hf_minitransformer project) with its `scripts/convert.py`. No training was done: the
model computes what the source computes. {license_line}

Checked before this folder was written (float32, sample sentences and random token ids):

| figure | value |
| --- | --- |
{table}
{basis_line}
## Load

```python
from transformers import {auto}, AutoTokenizer

model = {auto}.from_pretrained("<this folder or repo>", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("<this folder or repo>", trust_remote_code=True)
```

With `hf_minitransformer` installed, `import hf_minitransformer` and drop `trust_remote_code`.
"""
    return ModelCard(content)


def write_folder(output: Path, model, tokenizer, family: dict, model_card: ModelCard, batch: dict,
                 overwrite: bool, record: dict):
    """Write under a temporary name, check the folder reloads to the same logits, then rename: a crash or a failed
    check never leaves a half-written or wrong OUTPUT_DIR. `record` (the source) goes into conversion.json."""
    with folder_renamed_into_place(output, replace=overwrite) as partial:  # OUTPUT_DIR is moved aside until then
        model.save_pretrained(partial)  # safetensors, config + auto_map, code files, generation_config.json
        if tokenizer is not None:
            tokenizer.save_pretrained(partial)
        model_card.save(partial / "README.md")
        reloaded = family["auto_class"].from_pretrained(partial).eval()
        with torch.no_grad():
            got, expected = reloaded(**batch), model(**batch)
        name = "logits" if getattr(expected, "logits", None) is not None else "last_hidden_state"
        if not torch.equal(got[name], expected[name]):
            raise ConversionMismatchError(f"The folder written to {partial} does not reload to the same {name}.")
        write_folder_record(partial, RECORD, **record)


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:  # bad input, or a conversion that is not exact: one line, not a traceback
        raise SystemExit("error: " + " ".join(str(error).split("\n"))) from None
