"""The training side of hf_minitransformer, one concern per module; `scripts/train.py` is its command line and wiring.

- `tasks`: causal LM, masked LM and encoder-decoder as one object each (Auto class, pipeline tag, data, collators,
  evaluation, baselines): the table every script reads, and the reason the loop never branches on the task.
- `arguments`: the flags of scripts/train.py and every check that can run before any work.
- `preparation`: raw data -> tokenizer -> config fitted to it -> tokenized splits.
- `evaluation`: held-out loss and perplexity, generation scores, baselines.
- `checkpointing`: resumable checkpoints (save, verify, resume) and the final model save.
- `distributed`: what changes under FSDP2 (tied embeddings in one module, saving a sharded model's own class) and
  the warning when a launch is not what its accelerate config asked for.
- `tracking`: logging and accelerate trackers.
- `run_folder`: who may write --output_dir, and the summary that closes a run.

The model code never imports this package, so a saved folder's remote code is the same with or without it.
"""
