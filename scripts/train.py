#!/usr/bin/env python
"""Train a MiniTransformer with accelerate: causal LM (default), masked LM, or encoder-decoder (seq2seq).

The same script runs on one CPU, one GPU, 8 GPUs (DDP or FSDP) and several nodes; the launcher decides which. With no
arguments it trains the `small` causal LM on the embedded corpus (the Python standard library's own source, no
download) for 2 epochs (974 steps, about 8 minutes on 2 CPU cores), and writes a model folder that
`AutoModelForCausalLM` loads. The README's main job stops at 800 steps, with a 7-minute safety limit:

    python scripts/train.py --output_dir outputs/main_job --max_train_steps 800 --max_train_seconds 420
    python scripts/show_model.py outputs/main_job

With `--task seq2seq` and no data, it trains the `small` MiniTransformerForSeq2SeqLM (4 encoder + 4 decoder layers) on
the embedded task, also without download: the code of each documented function of the same standard-library modules
-> the first line of its docstring (about 2,500 training pairs; the held-out pairs come from whole modules). 2 epochs
(314 steps) take about 5 minutes on 2 CPU cores; evaluation adds BLEU, chrF and exact match of generated docstring
lines, next to always answering the most frequent training target:

    python scripts/train.py --task seq2seq --output_dir outputs/seq2seq
    python scripts/show_model.py outputs/seq2seq
    # Seq2seq on your own pairs: two columns of json/jsonl/csv/parquet files (or of a Hub dataset)
    python scripts/train.py --task seq2seq --train_file pairs.jsonl --source_column code --target_column doc \
        --max_source_length 256 --max_target_length 32 --generation_num_beams 4 --output_dir outputs/doc

    # One CPU or one GPU (plain python works as well as `accelerate launch`)
    python scripts/train.py --output_dir outputs/small-clm
    accelerate launch --config_file configs/accelerate/single_gpu.yaml scripts/train.py --output_dir outputs/small-clm
    # Masked LM on your own files (text, json, csv or parquet)
    python scripts/train.py --task mlm --train_file train.txt --validation_file valid.txt --output_dir outputs/mlm
    # 8 GPUs on one machine, DDP or FSDP (FSDP shards each MiniTransformerLayer; accelerate runs FSDP on GPUs only,
    # elsewhere the FSDP config trains as DDP, and a warning says so)
    accelerate launch --config_file configs/accelerate/ddp_8gpu.yaml scripts/train.py --model_config base ...
    accelerate launch --config_file configs/accelerate/fsdp_8gpu.yaml scripts/train.py --model_config base ...
    # 2 nodes x 8 GPUs: run on each node, with its rank (output_dir on a filesystem both nodes share)
    accelerate launch --config_file configs/accelerate/multinode_2x8.yaml --machine_rank 0 \
        --main_process_ip 10.0.0.1 scripts/train.py --model_config base --output_dir /shared/outputs/base
    # Two processes on a CPU-only machine (ACCELERATE_USE_CPU is required, `--cpu --num_processes 2` starts one)
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
        --dynamo_backend no --main_process_port 0 scripts/train.py --output_dir outputs/ddp-cpu
    # Resume the run in --output_dir exactly where its last checkpoint left it
    python scripts/train.py --output_dir outputs/small-clm --resume_from_checkpoint latest

Outputs in --output_dir: model (safetensors) + config + generation config + tokenizer, `training_summary.json`,
`train_log.jsonl` (every logged metric), tensorboard events when tensorboard is installed, and `checkpoints/`. A folder
holds one run: one that already holds files is refused unless the run resumes in it or --overwrite_output_dir is
given, a run in progress holds a lock on it, and model, tokenizer and summary are written together at the end.
"""

import argparse
import math
import os
import shutil
import time
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler
from transformers.trainer_pt_utils import LabelSmoother

import hf_minitransformer  # noqa: F401  (registers MiniTransformer with the Auto classes)
from hf_minitransformer.configuration_minitransformer import MiniTransformerConfig
from hf_minitransformer.training.arguments import check_args, parse_args
from hf_minitransformer.training.checkpointing import TrainState, load_checkpoint, save_checkpoint, save_model
from hf_minitransformer.training.distributed import share_tied_embedding_module, warn_if_not_as_configured
from hf_minitransformer.training.evaluation import Evaluator, format_metrics
from hf_minitransformer.training.preparation import PreparedData, prepare_data
from hf_minitransformer.training.run_folder import (
    WORK_TOKENIZER,
    claim_output_dir,
    discard_summary,
    write_summary,
)
from hf_minitransformer.training.tasks import TASKS, Task, max_new_tokens
from hf_minitransformer.training.tracking import TrainingMetrics, init_trackers, setup_logging, trackers


logger = get_logger(__name__)


def main(argv: list[str] | None = None) -> torch.nn.Module:
    """Train, evaluate and save; returns the trained (unwrapped) model for in-process callers such as tests."""
    start = time.time()
    args = parse_args(argv)
    base_config, resume_path = check_args(args)
    accelerator = build_accelerator(args)
    with claim_output_dir(accelerator, args, resume_path):
        return train(args, TASKS[args.task], accelerator, base_config, resume_path, start)


def train(args: argparse.Namespace, task: Task, accelerator: Accelerator, base_config: MiniTransformerConfig,
          resume_path: Path | None, start: float) -> torch.nn.Module:
    """Prepare the data, train, save the model, evaluate it, and write the summary last."""
    data = prepare_data(args, task, accelerator, base_config, resume_path)

    set_seed(args.seed)  # before the model is built, so the seed also fixes the initial weights
    model = build_model(args, task, data.config)
    train_dataloader, evaluator = task.dataloaders(args, data.processed, data.tokenizer, model)
    if accelerator.is_fsdp2:
        share_tied_embedding_module(model)
    optimizer = build_optimizer(model, args)
    # Before `prepare` the per-process length is an estimate; it is recomputed from the sharded loader below.
    total_steps, _ = count_steps(args, math.ceil(len(train_dataloader) / accelerator.num_processes))
    # The prepared scheduler steps once per process on each optimizer step, hence the scaling.
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer,
                              num_warmup_steps=args.num_warmup_steps * accelerator.num_processes,
                              num_training_steps=total_steps * accelerator.num_processes)
    model, optimizer, train_dataloader, scheduler = accelerator.prepare(model, optimizer, train_dataloader, scheduler)
    evaluator.prepare(accelerator)
    total_steps, num_epochs = count_steps(args, len(train_dataloader))

    state = load_checkpoint(accelerator, resume_path, len(train_dataloader)) if resume_path else TrainState()
    init_trackers(accelerator, args, state.step)
    logger.info(f"{count_parameters(model):,} parameters; {len(data.processed['train'])} training "
                f"{task.unit(args)}; {total_steps} optimizer steps over {num_epochs} epoch(s) on "
                f"{accelerator.num_processes} process(es); starting at step {state.step}.")
    stopped_early = train_loop(args, task, accelerator, model, optimizer, scheduler, train_dataloader, evaluator,
                               data, state, total_steps, num_epochs)
    # The model is saved before the evaluation, so that an evaluation error never loses it.
    discard_summary(accelerator, args.output_dir)
    save_model(accelerator, model, data.tokenizer, args.output_dir, max_new_tokens(args))
    if accelerator.is_main_process:
        shutil.rmtree(Path(args.output_dir) / WORK_TOKENIZER, ignore_errors=True)
    metrics = evaluator(accelerator, model)
    accelerator.log({f"eval_{k}": v for k, v in metrics.items()}, step=state.step)
    if accelerator.is_main_process:
        summary = build_summary(args, task, accelerator, data, evaluator, state, metrics, count_parameters(model),
                                time.time() - start)
        summary["planned_optimizer_steps"], summary["stopped_early"] = total_steps, stopped_early
        write_summary(Path(args.output_dir), summary)
        baselines = summary["baselines"]
        most_frequent = baselines.get("most_frequent_target")
        logger.info(f"Final eval {format_metrics(metrics)} (unigram baseline perplexity "
                    f"{baselines['unigram_perplexity']:.2f}"
                    + (f"; most frequent target {format_metrics(most_frequent)}" if most_frequent else "")
                    + f"); saved to {args.output_dir}")
    # Every rank's collectives (the DDP reducer's included) complete before any process group is torn down: a rank
    # that destroys its gloo group while work is pending can hang at exit.
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return accelerator.unwrap_model(model)


def train_loop(args: argparse.Namespace, task: Task, accelerator: Accelerator, model: torch.nn.Module,
               optimizer: torch.optim.Optimizer, scheduler, train_dataloader: DataLoader, evaluator: Evaluator,
               data: PreparedData, state: TrainState, total_steps: int, num_epochs: int) -> bool:
    """Train until `total_steps` (or `num_epochs`), evaluating, logging and checkpointing on the way; returns True
    if --max_train_seconds stopped it earlier."""
    started, seconds_before, out_of_time = time.time(), state.train_seconds, False
    label_smoother = LabelSmoother(args.label_smoothing_factor) if args.label_smoothing_factor else None
    window = TrainingMetrics(accelerator)
    progress = tqdm(total=total_steps, initial=state.step, desc="Training", dynamic_ncols=True,
                    disable=not accelerator.is_local_main_process)
    while state.step < total_steps and state.epoch < num_epochs and not out_of_time:
        model.train()
        train_dataloader.set_epoch(state.epoch)  # reshuffles: the order is a function of (seed, epoch)
        batches = train_dataloader
        if state.batches_in_epoch:  # resuming mid-epoch
            batches = accelerator.skip_first_batches(train_dataloader, state.batches_in_epoch)
        for batch in batches:
            grad_norm = None
            with accelerator.accumulate(model):
                loss = compute_loss(model, batch, label_smoother, task)
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            tokens = batch_tokens(batch) * accelerator.num_processes
            state.batches_in_epoch, state.tokens_seen = state.batches_in_epoch + 1, state.tokens_seen + tokens
            window.add(loss.detach().float(), tokens)
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            state.train_seconds = seconds_before + time.time() - started
            progress.update(1)
            if state.step % args.logging_steps == 0 or state.step == total_steps:
                metrics = window.log(state.step, scheduler.get_last_lr()[0], state.epoch, state.tokens_seen,
                                     grad_norm)
                progress.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{metrics['lr']:.2e}")
            if args.eval_steps and state.step % args.eval_steps == 0 and state.step < total_steps:
                metrics = evaluator(accelerator, model)
                accelerator.log({f"eval_{k}": v for k, v in metrics.items()}, step=state.step)
                progress.write(f"step {state.step}: eval {format_metrics(metrics)}")
            # Evaluation comes first, so that a checkpoint holds the RNG state from after it.
            if args.checkpointing_steps and state.step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, args.output_dir, state, data.tokenizer, args.checkpoints_total_limit)
            out_of_time = is_out_of_time(accelerator, started, args.max_train_seconds)
            if state.step >= total_steps or out_of_time:
                break
        else:
            state.epoch, state.batches_in_epoch = state.epoch + 1, 0
    progress.close()
    if out_of_time:
        logger.warning(f"Stopped after {state.step} of {total_steps} steps: --max_train_seconds "
                       f"{args.max_train_seconds} reached.")
    return out_of_time


def compute_loss(model: torch.nn.Module, batch: dict, label_smoother: LabelSmoother | None, task: Task
                 ) -> torch.Tensor:
    if label_smoother is None:
        return model(**batch).loss
    # As transformers' Trainer does: the model gives logits only, the smoother scores them (the causal LM's labels
    # are the inputs, shifted here). Seq2seq batches carry their decoder inputs already.
    outputs = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False)
    return label_smoother(outputs, batch["labels"], shift_labels=task.is_decoder)


def is_out_of_time(accelerator: Accelerator, started: float, max_seconds: float | None) -> bool:
    if max_seconds is None:
        return False
    # Clocks differ across processes: any process out of time raises the trigger, and all of them see it.
    if time.time() - started > max_seconds:
        accelerator.set_trigger()
    return accelerator.check_trigger()


def build_accelerator(args: argparse.Namespace) -> Accelerator:
    # A seedable sampler and a fixed data seed make the data order a function of (seed, epoch), so that a resumed
    # run sees the same batches; see ../shared/DISTRIBUTED.md.
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=trackers(args),
        project_dir=args.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != launched:
        raise RuntimeError(
            f"The launcher started {launched} processes but accelerate sees {accelerator.num_processes}: each "
            "process would train alone on all the data. On a machine without GPUs, set ACCELERATE_USE_CPU=true "
            "(see the launch commands at the top of scripts/train.py)."
        )
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise ValueError("--mixed_precision fp16 needs a GPU (on CPU it is silently ignored); use bf16 or no.")
    setup_logging(accelerator)
    logger.info(accelerator.state, main_process_only=False)
    warn_if_not_as_configured(accelerator)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
    accelerator.wait_for_everyone()
    return accelerator


def build_model(args: argparse.Namespace, task: Task, config: MiniTransformerConfig) -> torch.nn.Module:
    if args.init_from:
        return task.auto_class.from_pretrained(args.init_from, config=config)
    return task.model_class(config)


def build_optimizer(model: torch.nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    # Decay matrices (projections, embeddings) but not biases or LayerNorm gains, as in GPT-2 and nanoGPT.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                             eps=args.adam_epsilon)


def count_steps(args: argparse.Namespace, batches_per_epoch: int) -> tuple[int, int]:
    """(total optimizer steps, epochs) when each process sees `batches_per_epoch` micro-batches per epoch."""
    # accelerate steps the optimizer at the end of every epoch, even mid-accumulation, hence the ceil.
    steps_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
    total_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    return total_steps, math.ceil(total_steps / steps_per_epoch)


def count_parameters(model: torch.nn.Module) -> int:
    # Tied weights appear once in `parameters()`, so this is the number of distinct weights.
    return sum(p.numel() for p in model.parameters())


def batch_tokens(batch: dict) -> int:
    """Tokens a batch feeds the model, padding included: the (source) input_ids, plus the decoder inputs if any."""
    return sum(batch[name].numel() for name in ("input_ids", "decoder_input_ids") if name in batch)


def build_summary(args: argparse.Namespace, task: Task, accelerator: Accelerator, data: PreparedData,
                  evaluator: Evaluator, state: TrainState, metrics: dict, num_parameters: int,
                  wall_seconds: float) -> dict:
    baselines = task.baselines(args, data.processed, data.tokenizer, data.config.vocab_size)
    return {
        "task": task.name,
        "final_eval": metrics,
        "baselines": baselines,
        **evaluator.summary(),
        "optimizer_steps": state.step,
        "tokens_seen": state.tokens_seen,
        "train_wall_seconds": state.train_seconds,
        "total_wall_seconds_last_run": wall_seconds,
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "num_parameters": num_parameters,
        "data": {**data.data_args.describe(), **data.details},
        "config": data.config.to_dict(),
        "args": vars(args),
    }


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:  # bad input: a message naming the value, not a traceback
        raise SystemExit(f"error: {error}") from None
