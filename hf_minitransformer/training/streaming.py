"""Training on a stream (--streaming): each process reads its own share of a `datasets` IterableDataset, cuts it into
batches from a bounded buffer (`batching.StreamBatches`), and keeps its place in it for an exact resume.

- The share is datasets' `split_dataset_by_node`: whole shards (files) per process when their number is a multiple
  of the number of processes, otherwise every process reads the stream and keeps one example in `num_processes`.
- DataLoader workers (--preprocessing_num_workers) tokenize and batch in parallel; datasets gives each worker whole
  shards of its process's share, so a process can use at most as many workers as its share has shards.
- accelerate's `prepare` must not take this loader: for an IterableDataset it either reads the stream on the main
  process alone and sends each process slices of equal-shaped batches (`dispatch_batches`, which token-budget batches
  are not), or shards it once more (`IterableDatasetShard`, which needs a fixed batch size). The loader is already
  this process's, so it is prepared as a one-process loader: accelerate's DataLoaderShard over torchdata's
  StatefulDataLoader, which moves batches to the device and tells accelerate's GradientState where it stands.
- A checkpoint holds each process's place in its share (`state_dict` of that loader: StreamBatches' position in each
  worker). accelerate's `save_state` would write a stateful loader's state to one file, `dl_state_dict.bin`, from
  every process, so that the processes overwrite each other's; `checkpointing.save_checkpoint` writes one file per
  process instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import datasets
import torch
from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader

from .batching import StreamBatches


if TYPE_CHECKING:
    from .arguments import DataArguments, OptimizationArguments


def process_share(stream: datasets.IterableDataset, accelerator: Accelerator) -> datasets.IterableDataset:
    """This process's share of the stream."""
    return split_dataset_by_node(stream, rank=accelerator.process_index, world_size=accelerator.num_processes)


def shards_per_process(num_shards: int, num_processes: int) -> int:
    """The shards of one process's share, as `split_dataset_by_node` deals them."""
    return num_shards // num_processes if num_shards % num_processes == 0 else num_shards


def stream_dataloader(data: DataArguments, optimization: OptimizationArguments, stream: datasets.IterableDataset,
                      collator) -> DataLoader:
    """Batches of the stream within --max_tokens_per_batch (or of --per_device_train_batch_size examples), collated
    in --preprocessing_num_workers workers (none: in this process)."""
    budget = optimization.max_tokens_per_batch
    batches = StreamBatches(stream, data.shuffle_buffer_size, optimization.seed, max_tokens=budget,
                            batch_size=None if budget else optimization.per_device_train_batch_size)
    # batch_size=None: each item of the dataset is a whole batch, which the collator pads. The generator seeds the
    # workers' random generators (the masked LM's collator draws its masks there).
    return DataLoader(batches, batch_size=None, collate_fn=collator, num_workers=data.preprocessing_num_workers or 0,
                      generator=torch.Generator().manual_seed(optimization.seed))


def prepare_stream_dataloader(accelerator: Accelerator, loader: DataLoader) -> DataLoader:
    """accelerate's loader for this process alone (see the module docstring): batches on the device, a state."""
    return prepare_data_loader(loader, device=accelerator.device, num_processes=1, process_index=0,
                               put_on_device=True, dispatch_batches=False, use_stateful_dataloader=True)


def check_stream_workers(stream: datasets.IterableDataset, num_workers: int | None, num_processes: int):
    """Every DataLoader worker must get at least one shard of its process's share: one without any has nothing to
    read."""
    shards = shards_per_process(stream.num_shards, num_processes)
    if num_workers and num_workers > shards:
        raise ValueError(f"--preprocessing_num_workers {num_workers}: with --streaming each worker reads whole shards "
                         f"(files) of its process's share of the stream, and a share of this stream has {shards} "
                         f"({stream.num_shards} shards over {num_processes} processes); give at most {shards}, or "
                         "split the data into more files.")
