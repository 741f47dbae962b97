#!/usr/bin/env python
"""Token-budget batches against fixed-size batches of the same mean tokens: padding and training speed.

    python scripts/benchmark_batching.py                       # the docstring task, small preset, 2048-token budget
    python scripts/benchmark_batching.py --max_tokens_per_batch 4096 --steps 30

The pairs are scripts/train.py's own (`--task seq2seq`, the embedded docstring task: function code -> the first line
of its docstring, 1 to 256 source tokens, a length-skewed set), tokenized as train.py tokenizes them. Two ways to
batch one epoch of them:
- token budget (`--max_tokens_per_batch`): train.py's TokenBudgetBatchSampler, pairs grouped by length;
- fixed size: shuffled batches of the size whose mean padded tokens per batch is closest to the budget's.
Both train one model (the preset's MiniTransformerForSeq2SeqLM, dropout off), one step of each in turn, so a shared
machine slows both alike; a step is forward + backward + AdamW step on the next batch of each loader. The table gives
the share of real (non-padding) tokens over the epoch and the target tokens per second (labels that are not padding,
of the timed batches over their steps' time: `--steps` steps of each after `--warmup`).
"""

import argparse
import tempfile
import time

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

import hf_minitransformer  # noqa: F401  (registers the Auto classes)
from hf_minitransformer.training.arguments import check_args, parse_args
from hf_minitransformer.training.batching import TokenBudgetBatchSampler
from hf_minitransformer.training.preparation import prepare_data
from hf_minitransformer.training.tasks import TASKS
from hf_minitransformer.training.tracking import padded_tokens, real_tokens


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_config", default="small", help="Preset of the model trained in the comparison.")
    parser.add_argument("--max_tokens_per_batch", type=int, default=2048, help="The token budget per batch.")
    parser.add_argument("--max_source_length", type=int, default=256, help="Source tokens kept, as in train.py.")
    parser.add_argument("--steps", type=int, default=20, help="Timed steps of each way of batching.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps of each first.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as output_dir:
        train_args = parse_args(["--task", "seq2seq", "--model_config", args.model_config, "--max_source_length",
                                 str(args.max_source_length), "--config_overrides", "hidden_dropout_prob=0",
                                 "--max_tokens_per_batch", str(args.max_tokens_per_batch), "--report_to", "none",
                                 "--output_dir", output_dir])
        config, _ = check_args(train_args)
        task = TASKS["seq2seq"]
        data = prepare_data(task, Accelerator(cpu=True), train_args.model, train_args.data, output_dir, config, None)
    seed = train_args.optimization.seed
    torch.manual_seed(seed)
    model = task.model_class(data.config)
    collator, _ = task.collators(train_args.optimization, data.tokenizer, model)
    pairs = data.processed["train"]
    lengths = task.example_lengths(train_args.data, pairs)
    budget = TokenBudgetBatchSampler(lengths, args.max_tokens_per_batch, seed)
    loaders = {"token budget": DataLoader(pairs, batch_sampler=budget, collate_fn=collator)}
    size = fixed_size_of_equal_tokens(loaders["token budget"], pairs, collator, seed)
    loaders[f"fixed size ({size})"] = DataLoader(pairs, batch_size=size, shuffle=True, collate_fn=collator,
                                                 generator=torch.Generator().manual_seed(seed))
    print(f"{len(pairs)} training pairs (docstring task, max source length {args.max_source_length}); "
          f"{sum(p.numel() for p in model.parameters()):,} parameters; {torch.get_num_threads()} threads")
    rows = {name: epoch_figures(loader) for name, loader in loaders.items()}
    speeds = timed_steps(model, loaders, args.steps, args.warmup)
    print("| batches | batches per epoch | pairs per batch | padded tokens per batch | non-padding share | "
          "target tokens/s |\n| --- | --- | --- | --- | --- | --- |")
    for name, figures in rows.items():
        per_second = figures["target_tokens_per_s"] = speeds[name]
        print(f"| {name} | {figures['batches']} | {figures['pairs'] / figures['batches']:.1f} | "
              f"{figures['padded'] / figures['batches']:.0f} | {figures['real'] / figures['padded']:.3f} | "
              f"{per_second:.0f} |")
    budget_row, fixed_row = rows.values()
    share_ratio = (budget_row["real"] / budget_row["padded"]) / (fixed_row["real"] / fixed_row["padded"])
    speed_ratio = budget_row["target_tokens_per_s"] / fixed_row["target_tokens_per_s"]
    print(f"token budget / fixed size: non-padding share {share_ratio:.2f}x, target tokens/s {speed_ratio:.2f}x")


def fixed_size_of_equal_tokens(budget_loader: DataLoader, pairs, collator, seed: int) -> int:
    """The batch size whose shuffled batches hold, on average, the padded tokens of the token-budget batches."""
    target = epoch_figures(budget_loader)
    target = target["padded"] / target["batches"]
    best, best_gap = 1, float("inf")
    for size in range(1, 257):
        loader = DataLoader(pairs, batch_size=size, shuffle=True, collate_fn=collator,
                            generator=torch.Generator().manual_seed(seed))
        figures = epoch_figures(loader, max_batches=50)
        gap = abs(figures["padded"] / figures["batches"] - target)
        if gap < best_gap:
            best, best_gap = size, gap
        elif figures["padded"] / figures["batches"] > target:
            break
    return best


def epoch_figures(loader: DataLoader, max_batches: int | None = None) -> dict[str, int]:
    """Batches, pairs, padded and real tokens (source + decoder), and target tokens of one pass over `loader`."""
    figures = dict.fromkeys(("batches", "pairs", "padded", "real", "target_tokens"), 0)
    for number, batch in enumerate(loader):
        if max_batches is not None and number == max_batches:
            break
        figures["batches"] += 1
        figures["pairs"] += len(batch["input_ids"])
        figures["padded"] += padded_tokens(batch)
        figures["real"] += int(real_tokens(batch))
        figures["target_tokens"] += int((batch["labels"] != -100).sum())
    return figures


def timed_steps(model: torch.nn.Module, loaders: dict[str, DataLoader], steps: int, warmup: int) -> dict[str, float]:
    """Target tokens per second of training steps on each loader's batches, one step of each in turn: the target
    tokens of the timed batches over the time their steps took."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    iterators = {name: iter(loader) for name, loader in loaders.items()}
    seconds, tokens = dict.fromkeys(loaders, 0.0), dict.fromkeys(loaders, 0)
    for step in range(warmup + steps):
        for name, batches in iterators.items():
            batch = next(batches)
            started = time.perf_counter()
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if step >= warmup:
                seconds[name] += time.perf_counter() - started
                tokens[name] += int((batch["labels"] != -100).sum())
    return {name: tokens[name] / seconds[name] for name in loaders}


if __name__ == "__main__":
    main()
