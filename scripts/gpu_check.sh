#!/usr/bin/env bash
# The GPU smoke check: what CI (CPU only) cannot run, on one GPU in under 8 minutes, with one summary at the end.
#
#   bash scripts/gpu_check.sh                                  # with the project's environment already installed
#   TRANSFORMERS_WHEEL=transformers-5.24.0-py3-none-any.whl bash scripts/gpu_check.sh   # an image with an older one
#
# 1. the gpu-marked tests (CUDA sync of a decoding step, flash attention, bf16/fp16 training);
# 2. scripts/benchmark.py --skip_cpu: base preset bf16 training (eager and compiled; tokens/s, MFU) and batch-1
#    generation against GPT-2, within GPU_CHECK_BENCHMARK_SECONDS;
# 3. a one-process FSDP2 run of scripts/train.py (configs/accelerate/fsdp_8gpu.yaml) to 20 steps, and the same run
#    resumed from its step-10 checkpoint: the two final weights files must be identical bit for bit;
# 4. 200 steps of the base preset as an encoder-decoder (12 + 12 layers) on the embedded docstring task with
#    token-budget batches (--max_tokens_per_batch) in bf16: tokens/s and MFU (6 N per token through the half of the
#    parameters a token passes, encoder or decoder, attention scores left out: an estimate).
# Each step has its own time limit; a failing step is reported and the rest still runs. Exit status: the number of
# failed steps. Outputs go to GPU_CHECK_DIR (default outputs/gpu_check); PEAK_TFLOPS is the card's dense bf16 peak
# (989 for an H100 SXM or an H200).
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${GPU_CHECK_DIR:-outputs/gpu_check}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
BENCHMARK_SECONDS=${GPU_CHECK_BENCHMARK_SECONDS:-150}
summary=()
failed=0

record() {  # record NAME STATUS DETAIL
    summary+=("$(printf '%-28s %-6s %s' "$1" "$2" "$3")")
    [ "$2" = ok ] || failed=$((failed + 1))
}

step() {  # step NAME SECONDS COMMAND...: run with a time limit, output to $OUT/NAME.log
    local name=$1 seconds=$2 start rc
    shift 2
    echo "== $name (limit ${seconds}s): $*"
    start=$(date +%s)
    timeout --kill-after=10 "$seconds" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    echo "   exit $rc after $(($(date +%s) - start)) s; log: $OUT/$name.log"
    return $rc
}

if [ -n "${TRANSFORMERS_WHEEL:-}" ]; then
    "$PYTHON" -m pip install -q "$TRANSFORMERS_WHEEL" && "$PYTHON" -m pip install -q --no-deps -e . \
        || { echo "error: could not install $TRANSFORMERS_WHEEL and the project"; exit 1; }
fi
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "error: no CUDA device visible to $PYTHON: this check needs a GPU (CI runs the CPU tests)." >&2
    exit 1
fi
rm -rf "$OUT" && mkdir -p "$OUT"  # only now: a machine without a GPU keeps an earlier check's outputs
"$PYTHON" -c "import torch, transformers, accelerate, hf_minitransformer; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'accelerate', accelerate.__version__, torch.cuda.get_device_name())" \
    | tee "$OUT/versions.txt"

# 1. gpu-marked tests
if step gpu_tests 150 "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider tests; then
    record "gpu tests" ok "$(tail -n 1 "$OUT/gpu_tests.log")"
else
    record "gpu tests" FAILED "$(tail -n 1 "$OUT/gpu_tests.log")"
fi

# 2. benchmark GPU section
if step benchmark $((BENCHMARK_SECONDS + 60)) "$PYTHON" scripts/benchmark.py --skip_cpu \
        --gpu_time_budget "$BENCHMARK_SECONDS" --peak_tflops "$PEAK_TFLOPS"; then
    record "benchmark --skip_cpu" ok "tables in $OUT/benchmark.log"
else
    record "benchmark --skip_cpu" FAILED "see $OUT/benchmark.log"
fi

# 3. FSDP2, one process: 20 steps straight, and 10 + resume to 20, bitwise equal
TINY=(--model_config tiny --vocab_size 1024 --block_size 128 --max_corpus_bytes 400000 --report_to none
      --max_train_steps 20 --checkpointing_steps 10 --per_device_train_batch_size 8)
FSDP=("$PYTHON" -m accelerate.commands.launch --config_file configs/accelerate/fsdp_8gpu.yaml --num_processes 1)
if step fsdp_run 120 "${FSDP[@]}" scripts/train.py "${TINY[@]}" --output_dir "$OUT/fsdp_straight" \
    && step fsdp_resume 120 "${FSDP[@]}" scripts/train.py "${TINY[@]}" --output_dir "$OUT/fsdp_resumed" \
        --resume_from_checkpoint "$OUT/fsdp_straight/checkpoints/checkpoint-10"; then
    if cmp -s "$OUT/fsdp_straight/model.safetensors" "$OUT/fsdp_resumed/model.safetensors"; then
        record "FSDP2 resume" ok "final weights bitwise equal after resuming from step 10"
    else
        record "FSDP2 resume" FAILED "final weights differ between the straight and the resumed run"
    fi
else
    record "FSDP2 resume" FAILED "see $OUT/fsdp_run.log and $OUT/fsdp_resume.log"
fi

# 4. base-preset encoder-decoder, token-budget batches, bf16
if step seq2seq_base 180 "$PYTHON" scripts/train.py --task seq2seq --model_config base --mixed_precision bf16 \
        --max_tokens_per_batch 16384 --max_train_steps 200 --logging_steps 20 --max_eval_generate_samples 32 \
        --report_to none --output_dir "$OUT/seq2seq_base"; then
    record "seq2seq base, 200 steps" ok "$("$PYTHON" - "$OUT/seq2seq_base" "$PEAK_TFLOPS" <<'EOF'
import json, statistics, sys
from pathlib import Path

folder, peak = Path(sys.argv[1]), float(sys.argv[2])
summary = json.loads((folder / "training_summary.json").read_text())
records = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][1:]  # the first window compiles and warms up
tokens_per_s = statistics.median(rates)
mfu = 3 * summary["num_parameters"] * tokens_per_s / (peak * 1e12)
shares = [r["non_padding_share"] for r in records if "non_padding_share" in r]
print(f"{tokens_per_s:,.0f} tokens/s (padding included; non-padding share {statistics.mean(shares):.2f}), "
      f"MFU {mfu:.1%} of {peak:g} TFLOPS, {summary['num_parameters']:,} parameters")
EOF
)"
else
    record "seq2seq base, 200 steps" FAILED "see $OUT/seq2seq_base.log"
fi

echo
echo "== GPU check summary ($(cat "$OUT/versions.txt"))"
printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"
exit $failed
