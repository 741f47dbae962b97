"""Token-budget batches: fairseq's `--max-tokens`, and Vaswani et al. §5.1, "Sentence pairs were batched together by
approximate sequence length. Each training batch contained a set of sentence pairs containing approximately 25000
source tokens and 25000 target tokens."

Each epoch, the examples are shuffled (a function of seed and epoch, as accelerate's seedable sampler makes it), sorted
by length (stable, so equal lengths stay shuffled), and cut greedily into batches of at most `max_tokens` tokens,
padding counted: a batch of n examples costs n x its longest example. The batches are then shuffled. accelerate's
`prepare` deals whole batches to the processes (each gets at most `max_tokens` per step) and evens out their number,
and `skip_first_batches` replays an epoch's batches on resume, since they depend on nothing but seed and epoch.

A stream (--streaming) has no epoch to sort: `StreamBatches` cuts the same batches from a bounded buffer of it.
"""

import copy
import hashlib
import itertools
from collections.abc import Iterator, Sequence

import datasets
import torch
from accelerate.data_loader import SeedableRandomSampler
from torch.utils.data import BatchSampler


class TokenBudgetBatchSampler(BatchSampler):
    """Batches of example indices grouped by length, each at most `max_tokens` tokens padded."""

    def __init__(self, lengths: Sequence[int], max_tokens: int, seed: int):
        longest = max(lengths)
        if longest > max_tokens:
            raise ValueError(f"--max_tokens_per_batch {max_tokens} is smaller than the longest example ({longest} "
                             "tokens): give at least that many.")
        # `sampler` and its `set_epoch` are where accelerate's DataLoaderShard sets each epoch.
        super().__init__(SeedableRandomSampler(range(len(lengths)), data_seed=seed), batch_size=1, drop_last=False)
        self.batch_size = None  # batches differ in size (what accelerate's BatchSamplerShard expects then)
        self.lengths, self.max_tokens = list(lengths), max_tokens
        # The batch sizes depend on the sorted lengths only, not on the order of equal ones: the same every epoch.
        self.num_batches = len(cut_into_batches(sorted(range(len(lengths)), key=self.lengths.__getitem__),
                                                self.lengths, max_tokens))

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.sampler.epoch  # read first: the sampler moves to the next epoch once iterated
        order = sorted(self.sampler, key=self.lengths.__getitem__)
        batches = cut_into_batches(order, self.lengths, self.max_tokens)
        generator = torch.Generator().manual_seed(self.sampler.initial_seed + epoch)
        for index in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[index]

    def __len__(self) -> int:
        return self.num_batches


def cut_into_batches(order: list[int], lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Consecutive runs of `order` whose size times their longest length stays within `max_tokens`."""
    batches, batch, longest = [], [], 0
    for index in order:
        length = max(longest, lengths[index])
        if batch and length * (len(batch) + 1) > max_tokens:
            batches.append(batch)
            batch, length = [], lengths[index]
        batch.append(index)
        longest = length
    if batch:
        batches.append(batch)
    return batches


class StreamBatches(torch.utils.data.IterableDataset):
    """Batches of a stream's examples, cut from a bounded buffer, endlessly and resumably.

    The stream is read `buffer_size` examples at a time. Each buffer is shuffled and, with `max_tokens`, sorted by
    length (stable, so the shuffle breaks ties) and cut into batches of at most `max_tokens` padded tokens (as
    `TokenBudgetBatchSampler` cuts an epoch), or else cut into batches of `batch_size`; its batches are then shuffled
    and yielded. This is fairseq's batching within a window of the stream: memory stays bounded and a buffer's
    batches are grouped by length, but examples mix only within their buffer. The shuffles draw from a generator
    seeded by (seed, pass, buffer, worker), so the batches are a function of the stream and these numbers.

    At the end of the stream the next pass begins: the iteration never ends, and training stops at its step count,
    so that processes whose shares of the stream differ in size still take the same number of steps. The state
    (`state_dict`, saved by torchdata's StatefulDataLoader in each worker) is where the current buffer began in the
    stream (datasets' own `IterableDataset.state_dict()`) and how many of its batches were yielded: a resume reads
    that buffer again, cuts the same batches and skips those already yielded.
    """

    def __init__(self, examples: datasets.IterableDataset, buffer_size: int, seed: int, max_tokens: int | None = None,
                 batch_size: int | None = None):
        if (max_tokens is None) == (batch_size is None):
            raise ValueError(f"Give max_tokens or batch_size, got {max_tokens} and {batch_size}.")
        self.examples, self.buffer_size, self.seed = examples, buffer_size, seed
        self.max_tokens, self.batch_size = max_tokens, batch_size
        self.start_of_stream = examples.state_dict()  # loaded at each new pass (a loaded state would stay)
        self.position = {"pass": 0, "buffer": 0, "buffer_start": None, "batches_done": 0}

    def state_dict(self) -> dict:
        return copy.deepcopy(self.position)

    def load_state_dict(self, state: dict):
        self.position = copy.deepcopy(state)

    def __iter__(self) -> Iterator[list[dict]]:
        while True:
            from_the_start, empty = self.position["buffer_start"] is None, True
            for batch in self.batches_of_pass():
                empty = False
                yield batch
            if empty and from_the_start:
                raise ValueError("The training stream of this process yielded no example in a whole pass: it has "
                                 "fewer examples than processes, or a DataLoader worker holds no shard.")
            self.position = {"pass": self.position["pass"] + 1, "buffer": 0, "buffer_start": None, "batches_done": 0}

    def batches_of_pass(self) -> Iterator[list[dict]]:
        """The batches of the rest of the current pass, from the buffer `self.position` points at."""
        resumed = self.position["buffer_start"]
        start = resumed if resumed is not None else self.start_of_stream
        self.examples.load_state_dict(start)
        examples = iter(self.examples)
        while True:
            buffer = list(itertools.islice(examples, self.buffer_size))
            if not buffer:
                return
            skip = self.position["batches_done"] if self.position["buffer_start"] is not None else 0
            batches = self.cut(buffer)
            for done in range(skip + 1, len(batches) + 1):
                self.position = {**self.position, "buffer_start": start, "batches_done": done}
                yield batches[done - 1]
            self.position = {**self.position, "buffer": self.position["buffer"] + 1, "buffer_start": None,
                             "batches_done": 0}
            # Read only once the buffer's last example was yielded (before, it is the previous pass's state).
            start = self.examples.state_dict()

    def cut(self, buffer: list[dict]) -> list[list[dict]]:
        """The buffer's batches, in the shuffled order they are yielded in."""
        worker = torch.utils.data.get_worker_info()
        generator = torch.Generator().manual_seed(
            hash_numbers(self.seed, self.position["pass"], self.position["buffer"], worker.id if worker else 0))
        order = torch.randperm(len(buffer), generator=generator).tolist()
        if self.max_tokens is None:
            batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        else:
            lengths = [token_count(example) for example in buffer]
            batches = cut_into_batches(sorted(order, key=lengths.__getitem__), lengths, self.max_tokens)
        return [[buffer[i] for i in batches[b]] for b in torch.randperm(len(batches), generator=generator).tolist()]


def token_count(example: dict) -> int:
    """An example's size as a token budget counts it: its longer side, the inputs or the labels (a pair's source or
    target, as fairseq's --max-tokens counts it; a packed block's length)."""
    return max(len(example[name]) for name in ("input_ids", "labels") if name in example)


def hash_numbers(*numbers: int) -> int:
    """A 63-bit seed mixing several numbers: neighbouring buffers get unrelated shuffles."""
    return int.from_bytes(hashlib.sha256(repr(numbers).encode()).digest()[:8], "little") >> 1
