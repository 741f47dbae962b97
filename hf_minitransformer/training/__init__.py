"""The training side of hf_minitransformer, one concern per module; `scripts/train.py` is its command line and wiring.

- `tasks`: causal LM, masked LM and encoder-decoder as one object each (Auto class, pipeline tag, data, collators,
  evaluation, baselines): the table every script reads, and the reason the loop never branches on the task.
- `arguments`: the flags of scripts/train.py as typed groups (model, data, optimization, output, evaluation) parsed
  by `HfArgumentParser`, from flags or a YAML/JSON file, and every check that can run before any work.
- `preparation`: raw data -> tokenizer -> config fitted to it -> tokenized splits.
- `evaluation`: held-out loss and perplexity, generation scores, baselines.
- `checkpointing`: resumable checkpoints (save, verify, resume) and the final model save.
- `batching`: token-budget batches of a dataset (`TokenBudgetBatchSampler`) and of a stream's buffer (`StreamBatches`).
- `streaming`: --streaming's per-process shares of a stream, their loader, and why it bypasses `prepare`.
- `averaging`: the mean of a run's last K checkpoints as a model folder (scripts/average_checkpoints.py,
  train.py's --average_last_checkpoints).
- `distributed`: what changes under FSDP2 (tied embeddings in one module, saving a sharded model's own class) and
  the warning when a launch is not what its accelerate config asked for.
- `tracking`: logging and accelerate trackers.
- `run_folder`: who may write --output_dir, the summary that closes a run, and `read_finished_run`, the check that a
  finished folder still holds that one run's files (publish.py, show_model.py).

The model code never imports this package, so a saved folder's remote code is the same with or without it.
"""
