#!/usr/bin/env python
"""Average the model weights of the last K checkpoints of a scripts/train.py run into an ordinary model folder.

fairseq's `scripts/average_checkpoints.py --num-update-checkpoints K`, for our checkpoints: the element-wise mean of
the weights (summed in float64, saved in their own dtype) of OUTPUT_DIR/checkpoints/checkpoint-N for the K largest N.
The paper's base model averages the last 5 checkpoints (Vaswani et al. §6.1):

    python scripts/train.py --task seq2seq --output_dir outputs/run --checkpointing_steps 250 \
        --checkpoints_total_limit 5
    python scripts/average_checkpoints.py outputs/run --last 5                 # writes outputs/run/averaged
    python scripts/average_checkpoints.py outputs/run --last 5 --output_dir outputs/run-avg5

The folder holds safetensors weights, config.json with auto_map, the model's code files, generation_config.json, the
tokenizer and averaged_checkpoints.json (which checkpoints, at which steps): it loads with AutoModelForSeq2SeqLM
(or the causal / masked LM class) after `import hf_minitransformer`, or with `trust_remote_code=True` without the
package. Sharded (FSDP) checkpoints are read in this one process, no launcher needed.

Refused, with one `error:` line and nothing written: K < 1 or more than the run holds, a checkpoint that fails its
manifest, checkpoints of different runs (arguments that shape the weights differ) or of different weights, and an
--output_dir that exists (without --overwrite_output_dir), is the run folder or lies among its checkpoints.
"""

import argparse
from pathlib import Path

import hf_minitransformer  # noqa: F401  (registers MiniTransformer with the Auto classes: save_pretrained copies the code)
from hf_minitransformer.training.averaging import (
    AVERAGED_DIR,
    check_destination,
    select_checkpoints,
    write_averaged_model,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", metavar="OUTPUT_DIR", help="The --output_dir of a scripts/train.py run.")
    parser.add_argument("--last", type=int, default=5,
                        help="Average the K newest checkpoints (default 5, the paper's base model).")
    parser.add_argument("--output_dir", default=None, help=f"Folder to write (default: OUTPUT_DIR/{AVERAGED_DIR}).")
    parser.add_argument("--overwrite_output_dir", action="store_true", help="Replace --output_dir if it exists.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    """Check, average, write; returns the written folder."""
    args = parse_args(argv)
    run_dir = Path(args.run_dir)
    destination = Path(args.output_dir) if args.output_dir else run_dir / AVERAGED_DIR
    if not run_dir.is_dir():
        raise ValueError(f"OUTPUT_DIR {args.run_dir!r} is not a folder; pass the --output_dir of a training run.")
    check_destination(run_dir, destination, args.overwrite_output_dir)
    checkpoints = select_checkpoints(run_dir, args.last)
    print(f"Averaging {len(checkpoints)} checkpoints: {', '.join(path.name for path in checkpoints)}")
    write_averaged_model(checkpoints, run_dir, destination, overwrite=args.overwrite_output_dir)
    print(f"Wrote {destination}")
    return destination


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as error:  # bad input, or a checkpoint removed while it was read
        raise SystemExit(f"error: {error}") from None
