#!/usr/bin/env python
"""Load a model folder written by `scripts/train.py` in a fresh process and show what it learned.

Loads the model with `AutoModelForCausalLM` (or `AutoModelForMaskedLM` for a masked LM) and the tokenizer with
`AutoTokenizer`, rebuilds the held-out validation blocks from the data description in `training_summary.json`,
prints their perplexity next to the one recorded at the end of training, and, for a causal LM, a sampled continuation.

    python scripts/show_model.py outputs/small-clm
    python scripts/show_model.py outputs/small-clm --prompt "class Stack:" --max_new_tokens 120
"""

import argparse
import json
import math
from pathlib import Path

import torch
from datasets import DatasetDict
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    default_data_collator,
    set_seed,
)

import hf_minitransformer  # noqa: F401  (registers MiniTransformer with the Auto classes)
from hf_minitransformer.data import DataArgs, load_raw_datasets, tokenize_and_pack


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="The --output_dir of scripts/train.py.")
    parser.add_argument("--prompt", default="def ", help="Start of the sampled text (causal LM only).")
    parser.add_argument("--max_new_tokens", type=int, default=80, help="Tokens to sample after the prompt.")
    parser.add_argument("--temperature", type=float, default=0.8, help="Sampling temperature (0: greedy).")
    parser.add_argument("--batch_size", type=int, default=32, help="Validation blocks per forward pass.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the sampling (and of masked-LM masks).")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None):
    args = parse_args(argv)
    model_dir = Path(args.model_dir)
    summary_path = model_dir / "training_summary.json"
    if not summary_path.is_file():
        raise ValueError(f"{args.model_dir!r} has no training_summary.json; pass the output of scripts/train.py.")
    summary = json.loads(summary_path.read_text())
    causal = summary["task"] == "clm"
    model = (AutoModelForCausalLM if causal else AutoModelForMaskedLM).from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model.eval()
    print(f"Loaded {type(model).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters) and "
          f"{type(tokenizer).__name__} ({len(tokenizer)} tokens) from {model_dir}")

    eval_loss = validation_loss(model, tokenizer, summary, args.batch_size, args.seed)
    recorded = summary["final_eval"]
    print(f"Data: {summary['data']['source']}")
    print(f"Validation: {summary['data']['validation_blocks']} blocks of {summary['data']['block_size']} tokens")
    print(f"Eval loss {eval_loss:.4f}, perplexity {math.exp(eval_loss):.2f} (recorded at the end of training: "
          f"{recorded['perplexity']:.2f}; unigram baseline {summary['baselines']['unigram_perplexity']:.2f})")
    if causal:
        print(f"Sample (prompt {args.prompt!r}):\n{sample(model, tokenizer, args)}")


def validation_loss(model: torch.nn.Module, tokenizer, summary: dict, batch_size: int, seed: int) -> float:
    """Mean token loss over the validation blocks, rebuilt exactly as training built them."""
    data_args = DataArgs(**summary["data"]["args"])
    raw, documents = load_raw_datasets(data_args)
    causal = summary["task"] == "clm"
    blocks = tokenize_and_pack(DatasetDict(validation=raw["validation"]), tokenizer, data_args.text_column,
                               summary["data"]["block_size"], documents, add_labels=causal)["validation"]
    collator = default_data_collator if causal else DataCollatorForLanguageModeling(tokenizer, seed=seed)
    losses, weights = [], []
    for start in range(0, len(blocks), batch_size):
        batch = collator([blocks[i] for i in range(start, min(start + batch_size, len(blocks)))])
        with torch.no_grad():
            losses.append(model(**batch).loss.item())
        weights.append(batch["input_ids"].shape[0])  # every block holds the same number of tokens
    return sum(loss * weight for loss, weight in zip(losses, weights)) / sum(weights)


def sample(model: torch.nn.Module, tokenizer, args: argparse.Namespace) -> str:
    set_seed(args.seed)
    inputs = tokenizer(args.prompt, return_tensors="pt", add_special_tokens=False)
    options = {"do_sample": True, "temperature": args.temperature, "top_k": 50} if args.temperature > 0 else {}
    output_ids = model.generate(**inputs, max_new_tokens=args.max_new_tokens, **options)
    return tokenizer.decode(output_ids[0], skip_special_tokens=True)


if __name__ == "__main__":
    main()
