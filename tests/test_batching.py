"""Token-budget batches (--max_tokens_per_batch, fairseq's --max-tokens): every example once per epoch, no batch over
the budget (padding counted), grouped by length, the same batches for the same seed and epoch (so a resume replays
them), whole batches dealt to the processes by accelerate in equal numbers, and train.py on top of them."""

import random

import pytest
import torch
from accelerate.data_loader import BatchSamplerShard

from hf_minitransformer.training.batching import TokenBudgetBatchSampler

from .conftest import TINY_ARGS, load_script, read_log, read_summary, run_script, train_straight_and_resumed


train = load_script("train")
pytestmark = pytest.mark.usefixtures("isolated_train_runs")

# Lengths skewed as real pairs are: many short, a few long.
LENGTHS = random.Random(0).choices([3, 4, 5, 6, 8, 12, 20, 40], k=200)


def batches_of(sampler: TokenBudgetBatchSampler, epoch: int) -> list[list[int]]:
    sampler.sampler.set_epoch(epoch)
    return list(sampler)


def test_every_example_once_per_epoch_and_no_batch_over_the_budget():
    sampler = TokenBudgetBatchSampler(LENGTHS, max_tokens=64, seed=0)
    for epoch in range(3):
        batches = batches_of(sampler, epoch)
        assert sorted(i for batch in batches for i in batch) == list(range(len(LENGTHS)))
        assert all(len(batch) * max(LENGTHS[i] for i in batch) <= 64 for batch in batches)
        assert len(batches) == len(sampler)


def test_batches_group_similar_lengths_and_use_the_budget():
    sampler = TokenBudgetBatchSampler(LENGTHS, max_tokens=64, seed=0)
    batches = batches_of(sampler, 0)
    real = sum(LENGTHS)
    padded = sum(len(batch) * max(LENGTHS[i] for i in batch) for batch in batches)
    assert real / padded > 0.95  # sorted by length: next to no padding
    # Fixed-size batches of the same mean size, in random order, pad far more.
    size = round(len(LENGTHS) / len(batches))
    order = torch.randperm(len(LENGTHS), generator=torch.Generator().manual_seed(0)).tolist()
    fixed = [order[i : i + size] for i in range(0, len(order), size)]
    assert real / sum(len(batch) * max(LENGTHS[i] for i in batch) for batch in fixed) < 0.6


def test_the_batches_are_a_function_of_seed_and_epoch():
    first, second = (TokenBudgetBatchSampler(LENGTHS, max_tokens=64, seed=0) for _ in range(2))
    assert batches_of(first, 0) == batches_of(second, 0)  # what a resumed run replays
    assert batches_of(first, 1) == batches_of(second, 1)
    assert batches_of(first, 0) != batches_of(first, 1)  # reshuffled every epoch
    assert batches_of(TokenBudgetBatchSampler(LENGTHS, 64, seed=1), 0) != batches_of(first, 0)


def test_a_budget_smaller_than_the_longest_example_is_refused():
    with pytest.raises(ValueError, match=r"--max_tokens_per_batch 30 is smaller than the longest example \(40 "
                                         r"tokens\)"):
        TokenBudgetBatchSampler(LENGTHS, max_tokens=30, seed=0)


def test_accelerate_deals_whole_batches_to_each_process_in_equal_numbers():
    sampler = TokenBudgetBatchSampler(LENGTHS, max_tokens=64, seed=0)
    everything = batches_of(sampler, 0)
    shards = []
    for rank in range(2):
        sampler.sampler.set_epoch(0)  # as each process's loader sets it
        shards.append(list(BatchSamplerShard(sampler, num_processes=2, process_index=rank)))
    assert len(shards[0]) == len(shards[1]) == len(BatchSamplerShard(sampler, num_processes=2)) \
        == -(-len(everything) // 2)
    # Every batch goes whole to one process (the last one may be repeated to even out the counts).
    assert all(batch in everything for shard in shards for batch in shard)
    assert {tuple(batch) for shard in shards for batch in shard} == {tuple(batch) for batch in everything}


# --- through train.py ------------------------------------------------------------------------------------------------

SEQ2SEQ = ["--task", "seq2seq", "--max_corpus_bytes", "200000", "--max_source_length", "64", "--max_target_length",
           "16", "--max_tokens_per_batch", "256"]


def test_train_py_logs_the_non_padding_share_and_resumes_exactly(tmp_path):
    """6 steps straight equal 3 steps, a checkpoint, and 3 more after resuming from it, with token-budget batches."""
    common = [*TINY_ARGS, *SEQ2SEQ, "--max_train_steps", "6", "--gradient_accumulation_steps", "2",
              "--num_warmup_steps", "2", "--checkpointing_steps", "3", "--logging_steps", "3"]
    straight, resumed = train_straight_and_resumed(train, tmp_path, common, step=3)
    assert read_summary(straight)["final_eval"] == read_summary(resumed)["final_eval"]
    shares = [record["non_padding_share"] for record in read_log(straight) if "loss" in record]
    assert len(shares) == 2 and all(0.8 < share <= 1 for share in shares)  # pairs grouped by length pad little


def test_train_py_refuses_a_budget_below_the_longest_example_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"--max_tokens_per_batch 32 is less than a training example can be long "
                                         r"\(64 tokens\)"):
        train.main([*TINY_ARGS, *SEQ2SEQ, "--max_tokens_per_batch", "32", "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_batching_benchmark_compares_the_two_ways_of_batching(tmp_path):
    result = run_script(tmp_path, "benchmark_batching.py", "--model_config", "tiny", "--steps", "2", "--warmup", "1",
                        "--max_tokens_per_batch", "1024", timeout=600)
    lines = result.stdout.splitlines()
    budget = next(line for line in lines if line.startswith("| token budget |"))
    fixed = next(line for line in lines if line.startswith("| fixed size ("))
    shares = [float(row.split("|")[5]) for row in (budget, fixed)]
    assert shares[0] > shares[1]  # grouped by length, the budget's batches pad less (what the table reports)
    assert lines[-1].startswith("token budget / fixed size: non-padding share ")
