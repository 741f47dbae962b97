#!/usr/bin/env python
"""Train a MiniTransformer with accelerate: causal LM (default), masked LM, or encoder-decoder (seq2seq).

The same script runs on one CPU, one GPU, 8 GPUs (DDP or FSDP) and several nodes; the launcher decides which. With no
arguments it trains the `small` causal LM on the embedded corpus (the Python standard library's own source, no
download) for 2 epochs (974 steps, a fifth more than the main job's 800), and writes a model folder that
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
    # Data too large to load: a stream, tokenized on the fly (a folder of files reads one shard per file, which the
    # processes and their --preprocessing_num_workers DataLoader workers share out), token-budget batches from a
    # shuffle buffer; the run is counted in steps
    python scripts/train.py --task seq2seq --dataset_name data/pairs/ --streaming --max_train_steps 100000 \
        --max_tokens_per_batch 4096 --shuffle_buffer_size 100000 --preprocessing_num_workers 4 --output_dir outputs/big

    # Masked LM on your own files (text, json, csv or parquet)
    python scripts/train.py --task mlm --train_file train.txt --validation_file valid.txt --output_dir outputs/mlm
    # The arguments from a YAML or JSON file (flag names without --), the flags after it winning
    python scripts/train.py run.yaml --output_dir outputs/run
    # Resume the run in --output_dir exactly where its last checkpoint left it
    python scripts/train.py --output_dir outputs/small-clm --resume_from_checkpoint latest
    # Also average the last 5 checkpoints into outputs/dates/averaged and score it (scripts/average_checkpoints.py)
    python scripts/train.py --task seq2seq --embedded_task dates --model_config tiny --output_dir outputs/dates \
        --checkpointing_steps 250 --checkpoints_total_limit 5 --average_last_checkpoints 5

One GPU, 8 GPUs (DDP or FSDP), several nodes and two CPU processes: `accelerate launch` with a config of
configs/accelerate/, as the README's Training section shows (plain `python` runs one process).

Outputs in --output_dir: model (safetensors) + config + generation config + tokenizer, `training_summary.json`,
`train_log.jsonl` (every logged metric), tensorboard events when tensorboard is installed, `checkpoints/`, and with
--average_last_checkpoints the averaged model in `averaged/` (its scores in the summary). A folder
holds one run: one that already holds files is refused unless the run resumes in it or --overwrite_output_dir is
given, a run in progress holds a lock on it, and model, tokenizer and summary are written together at the end.
"""

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
from hf_minitransformer.manifest import describe_files
from hf_minitransformer.training.arguments import (
    OptimizationArguments,
    OutputArguments,
    TrainArguments,
    check_args,
    check_average_last_checkpoints,
    parse_args,
)
from hf_minitransformer.training.averaging import average_at_end_of_training
from hf_minitransformer.training.checkpointing import (
    TrainState,
    load_checkpoint,
    read_data_state,
    save_checkpoint,
    save_model,
)
from hf_minitransformer.training.distributed import (
    end_training,
    share_tied_embedding_module,
    warn_if_not_as_configured,
)
from hf_minitransformer.training.evaluation import Evaluator, format_metrics
from hf_minitransformer.training.preparation import PreparedData, prepare_data
from hf_minitransformer.training.run_folder import (
    WORK_TOKENIZER,
    claim_output_dir,
    discard_summary,
    remove_earlier_run,
    stopped_early_note,
    write_summary,
)
from hf_minitransformer.training.streaming import prepare_stream_dataloader
from hf_minitransformer.training.tasks import TASKS, Task
from hf_minitransformer.training.tracking import (
    TrainingMetrics,
    init_trackers,
    padded_tokens,
    setup_logging,
    trackers,
)


logger = get_logger(__name__)


def main(argv: list[str] | None = None) -> torch.nn.Module:
    """Train, evaluate and save; returns the trained (unwrapped) model for in-process callers such as tests."""
    start = time.time()
    args = parse_args(argv)
    base_config, resume_path = check_args(args)
    accelerator = build_accelerator(args.optimization, args.output)
    with claim_output_dir(accelerator, args.output.output_dir, args.output.overwrite_output_dir,
                          resume_path) as earlier_run:
        return train(args, TASKS[args.model.task], accelerator, base_config, resume_path, earlier_run, start)


def train(args: TrainArguments, task: Task, accelerator: Accelerator, base_config: MiniTransformerConfig,
          resume_path: Path | None, earlier_run: list[str], start: float) -> torch.nn.Module:
    """Prepare the data, train, save the model, evaluate it, and write the summary last."""
    output_dir = args.output.output_dir
    data = prepare_data(task, accelerator, args.model, args.data, output_dir, base_config, resume_path)

    set_seed(args.optimization.seed)  # before the model is built, so the seed also fixes the initial weights
    model = build_model(args.model.init_from, task, data.config)
    train_dataloader, evaluator = task.dataloaders(args.data, args.optimization, args.evaluation, data.processed,
                                                   data.tokenizer, model, data.train_stream)
    # Data, tokenizer and model are ready: only now may --overwrite_output_dir delete the run it replaces.
    remove_earlier_run(accelerator, output_dir, earlier_run)
    if accelerator.is_fsdp2:
        share_tied_embedding_module(model)
    model, optimizer, scheduler, train_dataloader, total_steps, num_epochs = prepare_for_training(
        args.optimization, args.data.streaming, accelerator, model, train_dataloader, evaluator)
    if args.output.average_last_checkpoints:
        check_average_last_checkpoints(args.output, total_steps)  # with an epoch-based run's steps, known only now
    state = resume_state(args.data.streaming, accelerator, resume_path, train_dataloader)
    init_trackers(accelerator, output_dir, args.flat(), state.step)
    examples, span = ("a stream of", "passes of it") if args.data.streaming else (len(data.processed["train"]),
                                                                                   f"{num_epochs} epoch(s)")
    logger.info(f"{count_parameters(model):,} parameters; {examples} training {task.unit(args.data)}; {total_steps} "
                f"optimizer steps over {span} on {accelerator.num_processes} process(es); starting at step "
                f"{state.step}.")
    stopped_early = train_loop(args, task, accelerator, model, optimizer, scheduler, train_dataloader, evaluator,
                               data, state, total_steps, num_epochs)
    # The model is saved before the evaluation, so that an evaluation error never loses it.
    discard_summary(accelerator, output_dir)
    saved_files = save_model(accelerator, model, data.tokenizer, output_dir, evaluator.generation_kwargs)
    if accelerator.is_main_process:
        shutil.rmtree(Path(output_dir) / WORK_TOKENIZER, ignore_errors=True)
    metrics = evaluator(accelerator, model)
    accelerator.log({f"eval_{k}": v for k, v in metrics.items()}, step=state.step)
    last = args.output.average_last_checkpoints
    averaged = (average_at_end_of_training(accelerator, output_dir, last, task, evaluator, stopped_early)
                if last else None)
    if accelerator.is_main_process:
        summary = build_summary(args, task, accelerator, data, evaluator, state, metrics, count_parameters(model),
                                time.time() - start)
        summary["planned_optimizer_steps"], summary["stopped_early"] = total_steps, stopped_early
        # Size and sha256 of every file the save wrote: publish.py and show_model.py refuse a folder that differs.
        summary["files"] = describe_files(Path(output_dir), saved_files)
        if averaged is not None:
            summary["averaged_checkpoints"] = averaged
        write_summary(Path(output_dir), summary)
        baselines = summary["baselines"]
        most_frequent = baselines.get("most_frequent_target")
        logger.info(f"Final eval {format_metrics(metrics)} (unigram baseline perplexity "
                    f"{baselines['unigram_perplexity']:.2f}"
                    + (f"; most frequent target {format_metrics(most_frequent)}" if most_frequent else "")
                    + f"); saved to {output_dir}")
        if stopped_early:
            logger.warning(stopped_early_note(state.step, total_steps, args.optimization.max_train_seconds))
    # Every rank's collectives (the DDP reducer's included) complete before any process group is torn down: a rank
    # that destroys its gloo group while work is pending can hang at exit.
    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(model)  # this function's last reference to the DDP wrapper
    end_training(accelerator)
    return model


def train_loop(args: TrainArguments, task: Task, accelerator: Accelerator, model: torch.nn.Module,
               optimizer: torch.optim.Optimizer, scheduler, train_dataloader: DataLoader, evaluator: Evaluator,
               data: PreparedData, state: TrainState, total_steps: int, num_epochs: int) -> bool:
    """Train until `total_steps` (or `num_epochs`), evaluating, logging and checkpointing on the way; returns True
    if --max_train_seconds stopped it earlier."""
    optimization, output, streaming = args.optimization, args.output, args.data.streaming
    started, seconds_before, out_of_time = time.time(), state.train_seconds, False
    smoothing = optimization.label_smoothing_factor
    label_smoother = LabelSmoother(smoothing) if smoothing else None
    window = TrainingMetrics(accelerator)
    progress = tqdm(total=total_steps, initial=state.step, desc="Training", dynamic_ncols=True,
                    disable=not accelerator.is_local_main_process)
    while state.step < total_steps and state.epoch < num_epochs and not out_of_time:
        model.train()
        train_dataloader.set_epoch(state.epoch)  # reshuffles: the order is a function of (seed, epoch)
        batches = train_dataloader
        # Resuming mid-epoch (a stream's loader has its place restored instead, and never ends).
        if state.batches_in_epoch and not streaming:
            batches = accelerator.skip_first_batches(train_dataloader, state.batches_in_epoch)
        for batch in batches:
            grad_norm = None
            with accelerator.accumulate(model):
                loss = compute_loss(model, batch, label_smoother, task)
                accelerator.backward(loss)
                if accelerator.sync_gradients and optimization.max_grad_norm > 0:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), optimization.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            tokens = padded_tokens(batch) * accelerator.num_processes
            state.batches_in_epoch, state.tokens_seen = state.batches_in_epoch + 1, state.tokens_seen + tokens
            window.add(loss.detach().float(), tokens, batch)
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            state.train_seconds = seconds_before + time.time() - started
            progress.update(1)
            if state.step % output.logging_steps == 0 or state.step == total_steps:
                metrics = window.log(state.step, scheduler.get_last_lr()[0], state.epoch, state.tokens_seen,
                                     grad_norm)
                progress.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{metrics['lr']:.2e}")
            if output.eval_steps and state.step % output.eval_steps == 0 and state.step < total_steps:
                metrics = evaluator(accelerator, model)
                accelerator.log({f"eval_{k}": v for k, v in metrics.items()}, step=state.step)
                progress.write(f"step {state.step}: eval {format_metrics(metrics)}")
            # Evaluation comes first, so that a checkpoint holds the RNG state from after it.
            if output.checkpointing_steps and state.step % output.checkpointing_steps == 0:
                save_checkpoint(accelerator, model, output.output_dir, state, data.tokenizer,
                                output.checkpoints_total_limit, args.flat(),
                                train_dataloader.state_dict() if streaming else None, evaluator.generation_kwargs)
            out_of_time = is_out_of_time(accelerator, started, optimization.max_train_seconds)
            if state.step >= total_steps or out_of_time:
                break
        else:
            state.epoch, state.batches_in_epoch = state.epoch + 1, 0
    progress.close()
    if out_of_time:
        logger.warning(f"Stopped after {state.step} of {total_steps} steps: --max_train_seconds "
                       f"{optimization.max_train_seconds} reached.")
    return out_of_time


def prepare_for_training(optimization: OptimizationArguments, streaming: bool, accelerator: Accelerator,
                         model: torch.nn.Module, train_dataloader: DataLoader, evaluator: Evaluator) -> tuple:
    """The optimizer and schedule, everything accelerate wraps, and the totals: (model, optimizer, scheduler,
    training loader, optimizer steps, epochs)."""
    optimizer = build_optimizer(model, optimization)
    # Before `prepare` the per-process length is an estimate; it is recomputed from the sharded loader below.
    total_steps, _ = count_steps(optimization, None if streaming else
                                 math.ceil(len(train_dataloader) / accelerator.num_processes))
    # The prepared scheduler steps once per process on each optimizer step, hence the scaling.
    scheduler = get_scheduler(optimization.lr_scheduler_type, optimizer,
                              num_warmup_steps=optimization.num_warmup_steps * accelerator.num_processes,
                              num_training_steps=total_steps * accelerator.num_processes)
    if streaming:  # the loader reads this process's share of the stream already: not for `prepare`
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        train_dataloader = prepare_stream_dataloader(accelerator, train_dataloader)
    else:
        model, optimizer, train_dataloader, scheduler = accelerator.prepare(model, optimizer, train_dataloader,
                                                                            scheduler)
    evaluator.prepare(accelerator)
    total_steps, num_epochs = count_steps(optimization, None if streaming else len(train_dataloader))
    return model, optimizer, scheduler, train_dataloader, total_steps, num_epochs


def resume_state(streaming: bool, accelerator: Accelerator, resume_path: Path | None,
                 train_dataloader: DataLoader) -> TrainState:
    """Where training stands: the start, or all that the checkpoint at `resume_path` saved restored."""
    if resume_path is None:
        return TrainState()
    state = load_checkpoint(accelerator, resume_path, None if streaming else len(train_dataloader))
    if streaming:  # each process's place in its share of the stream
        train_dataloader.load_state_dict(read_data_state(resume_path, accelerator.process_index))
    return state


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


def build_accelerator(optimization: OptimizationArguments, output: OutputArguments) -> Accelerator:
    # A seedable sampler and a fixed data seed make the data order a function of (seed, epoch), so that a resumed
    # run sees the same batches; see docs/distributed.md.
    accelerator = Accelerator(
        gradient_accumulation_steps=optimization.gradient_accumulation_steps,
        mixed_precision=optimization.mixed_precision,
        log_with=trackers(output.report_to, output.output_dir),
        project_dir=output.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=optimization.seed),
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != launched:
        if os.environ.get("RANK", "0") != "0":
            raise SystemExit(1)  # every worker finds the same; the first one says it, once
        raise ValueError(
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
        os.makedirs(output.output_dir, exist_ok=True)
    accelerator.wait_for_everyone()
    return accelerator


def build_model(init_from: str | None, task: Task, config: MiniTransformerConfig) -> torch.nn.Module:
    if not init_from:
        return task.model_class(config)
    model, loading = task.auto_class.from_pretrained(init_from, config=config, output_loading_info=True)
    # check_args refused another task and shape-changing overrides; a weights file that is not the config's would
    # still load partly, with the rest left random.
    missing = set(loading["missing_keys"]) | {name for name, *_ in loading["mismatched_keys"]}
    if missing:
        raise ValueError(f"--init_from {init_from!r}: its weights file does not hold {len(missing)} of the "
                         f"model's weights ({', '.join(sorted(missing)[:3])}, ...): it is not the weights of its "
                         "config.json.")
    return model


def build_optimizer(model: torch.nn.Module, optimization: OptimizationArguments) -> torch.optim.Optimizer:
    # Decay matrices (projections, embeddings) but not biases or LayerNorm gains, as in GPT-2 and nanoGPT.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": optimization.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=optimization.learning_rate,
                             betas=(optimization.adam_beta1, optimization.adam_beta2), eps=optimization.adam_epsilon)


def count_steps(optimization: OptimizationArguments, batches_per_epoch: int | None) -> tuple[int, int]:
    """(total optimizer steps, epochs) when each process sees `batches_per_epoch` micro-batches per epoch (None: a
    stream, whose loader never ends: one epoch of --max_train_steps)."""
    if batches_per_epoch is None:
        return optimization.max_train_steps, 1
    # accelerate steps the optimizer at the end of every epoch, even mid-accumulation, hence the ceil.
    steps_per_epoch = math.ceil(batches_per_epoch / optimization.gradient_accumulation_steps)
    total_steps = optimization.max_train_steps or optimization.num_train_epochs * steps_per_epoch
    return total_steps, math.ceil(total_steps / steps_per_epoch)


def count_parameters(model: torch.nn.Module) -> int:
    # Tied weights appear once in `parameters()`, so this is the number of distinct weights.
    return sum(p.numel() for p in model.parameters())


def build_summary(args: TrainArguments, task: Task, accelerator: Accelerator, data: PreparedData,
                  evaluator: Evaluator, state: TrainState, metrics: dict, num_parameters: int,
                  wall_seconds: float) -> dict:
    baselines = task.baselines(args.evaluation, data.processed, data.tokenizer, data.config.vocab_size)
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
        "args": args.flat(),
    }


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:  # bad input: a message naming the value, not a traceback
        raise SystemExit(f"error: {error}") from None
