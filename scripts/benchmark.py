#!/usr/bin/env python
"""Speed and memory of MiniTransformer against transformers' GPT-2 (causal LM) and BERT (masked LM), same shapes.

    # CPU: tiny and small presets at the training script's shapes (vocabulary 4096, 16 x 128 tokens)
    python scripts/benchmark.py
    # The config's default vocabulary (32000), one preset, more timed steps
    python scripts/benchmark.py --presets small --vocab_size 32000 --steps 20
    # One GPU, unattended (about 6 minutes on an H100): only the GPU section, base preset, sequence 1024, batch 16
    python scripts/benchmark.py --skip_cpu

Contenders, built at identical shapes (layers, hidden, heads, intermediate size, vocabulary, sequence, batch), ReLU
feed-forward and dropout off: `GPT2LMHeadModel` (activation_function="relu") against `MiniTransformerForCausalLM`, and
`BertForMaskedLM` (hidden_act="relu") against `MiniTransformerForMaskedLM`. Ours runs twice: with the default config
(`logits_with_loss="all"`, full logits like the references) and with `--logits_with_loss` (default "none": the loss
fused with the projection, chunk by chunk). Everything else is each library's default (SDPA attention, AdamW).

Method. All models live in one process and run round by round (one step of each, then the next round), so a noisy,
shared machine slows them alike; each figure is the median over `--steps` rounds after `--warmup` steps.
- Train step: forward + backward + AdamW step + zero_grad, on random tokens (15% masked for the masked LM).
- Generation: greedy `generate` with the KV cache, `--new_tokens` new tokens after a `--prompt_len` prompt, end of
  sequence disabled so every run has the same length; tokens/s counts the new tokens of the whole batch.
- Peak memory, in a fresh Python process per model (`--measure_memory_of`, run by this script): "RSS growth" is the
  process's high-water resident memory (VmHWM, Linux) after `--warmup` train steps minus its resident memory
  before the model was built, so it counts weights, gradients, AdamW state, activations, logits and allocator slack;
  "step peak" is the largest total of tensor bytes the next train step allocates on top of what already lives
  (activations, logits, gradients, temporaries), read from the torch profiler's memory events.
- Training script (`--train_script_steps`, 0 skips it): scripts/train.py trains the preset's causal LM for that many
  steps in a fresh process (embedded corpus, 1 MB); the median tokens/s of its logging windows after the first is
  compared with the bare train step of the same model and shapes, timed just before and just after.
Ratios are ours / theirs: below 1 is better for times and memory, above 1 is better for tokens/s.

GPU section (only with CUDA; skipped with a note otherwise): bf16 autocast training at `--gpu_*` shapes with and
without `torch.compile`, tokens/s and MFU with FLOPs/token = 6N + 12 L d T (N: parameters without position tables) over
`--peak_tflops`; then batch-1 greedy generation of `--gpu_new_tokens` tokens, default `generate` and static cache
(which `generate` compiles on a GPU). A failing measurement prints its error and the run goes on.
"""

import argparse
import contextlib
import copy
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from transformers import (
    BertConfig,
    BertForMaskedLM,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    MarianConfig,
    MarianMTModel,
)

from hf_minitransformer import MiniTransformerForCausalLM, MiniTransformerForMaskedLM
from hf_minitransformer.conversion import convert_model
from hf_minitransformer.presets import PRESETS, config_from_preset


CAUSAL = ("gpt2", "ours-causal", "ours-causal-tuned")
MASKED = ("bert", "ours-masked", "ours-masked-tuned")
MIB = 2**20
# Helsinki-NLP/opus-mt-en-de: d_model 512, 6 + 6 layers, 8 heads, FFN 2048, SiLU ("swish"), vocabulary 58,101.
OPUS_MT_EN_DE = dict(d_model=512, layers=6, heads=8, ffn=2048, vocab_size=58101)
# Ours quantized by hf_minitransformer.quantization, timed on its fast path: static cache, decoding step compiled.
INT8 = "ours int8 (oneDNN)"
# Ours float32 with its output projection in oneDNN's packed layout (hf_minitransformer.packed_weights), same path.
PACKED = "ours float32, packed output projection"
# Ours exported to ONNX (hf_minitransformer.export), run by its greedy loop on ONNX Runtime; warm-up: the export.
ONNX = ("ours onnx", "onnxruntime greedy loop")
# The torch kernels of matrix products, whose time in a decoding step bounds what any overhead cut can reach.
MATMUL_OPS = {"aten::addmm", "aten::mm", "aten::bmm", "aten::_int_mm"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"], choices=list(PRESETS),
                        help="Model sizes to compare on the CPU (hf_minitransformer/presets.py).")
    parser.add_argument("--vocab_size", type=int, default=4096, help="Vocabulary of every model (train.py's default).")
    parser.add_argument("--seq_len", type=int, default=128, help="Tokens per training sequence.")
    parser.add_argument("--batch_size", type=int, default=16, help="Sequences per training step.")
    parser.add_argument("--mlm_probability", type=float, default=0.15, help="Share of masked positions (masked LM).")
    parser.add_argument("--logits_with_loss", default="none", choices=["all", "labelled", "none"],
                        help="`logits_with_loss` of the second, tuned configuration of our models.")
    parser.add_argument("--steps", type=int, default=10, help="Timed rounds (train steps, generate calls) per model.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps per model before timing.")
    parser.add_argument("--generate_batch_sizes", type=int, nargs="+", default=[1, 8],
                        help="Batch sizes of the greedy generation benchmark.")
    parser.add_argument("--prompt_len", type=int, default=16, help="Prompt tokens before generation.")
    parser.add_argument("--new_tokens", type=int, default=32, help="Tokens generated per sequence on the CPU.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core).")
    parser.add_argument("--train_script_steps", type=int, default=60,
                        help="Optimizer steps of scripts/train.py in the training-script section (0: skip it).")
    parser.add_argument("--skip_cpu", action="store_true", help="Run only the GPU section.")
    parser.add_argument("--inference_only", action="store_true",
                        help="Run only the CPU inference section (static cache / compiled decoding).")
    parser.add_argument("--skip_inference", action="store_true", help="Skip the CPU inference section.")
    parser.add_argument("--inference_preset", default="small", choices=list(PRESETS),
                        help="Model size of the causal LM in the inference section.")
    parser.add_argument("--inference_new_tokens", type=int, default=64,
                        help="New tokens of the causal LM in the inference section (prompt: --prompt_len).")
    parser.add_argument("--seq2seq_source_len", type=int, default=20, help="Source tokens of the encoder-decoder.")
    parser.add_argument("--seq2seq_new_tokens", type=int, default=32, help="Tokens the encoder-decoder generates.")
    parser.add_argument("--seq2seq_layers", type=int, default=OPUS_MT_EN_DE["layers"],
                        help="Encoder and decoder layers of the encoder-decoder (opus-mt-en-de: 6).")
    parser.add_argument("--seq2seq_vocab_size", type=int, default=OPUS_MT_EN_DE["vocab_size"],
                        help="Vocabulary of the encoder-decoder (opus-mt-en-de: 58101).")
    parser.add_argument("--skip_gpu", action="store_true", help="Skip the GPU section even with CUDA.")
    parser.add_argument("--gpu_preset", default="base", choices=list(PRESETS), help="Model size on the GPU.")
    parser.add_argument("--gpu_vocab_size", type=int, default=50257, help="Vocabulary on the GPU (GPT-2's).")
    parser.add_argument("--gpu_seq_len", type=int, default=1024, help="Tokens per sequence on the GPU.")
    parser.add_argument("--gpu_batch_size", type=int, default=16, help="Sequences per step on the GPU.")
    parser.add_argument("--gpu_new_tokens", type=int, default=256, help="Tokens generated at batch 1 on the GPU.")
    parser.add_argument("--peak_tflops", type=float, default=989.0,
                        help="The card's dense bf16 peak for MFU (989 for an H100 SXM).")
    parser.add_argument("--gpu_time_budget", type=float, default=420.0,
                        help="Seconds after which the GPU section skips what is left (one call stays under 8 min).")
    parser.add_argument("--measure_memory_of", default=None, choices=CAUSAL + MASKED,
                        help="Internal: measure this model's train-step memory in this fresh process, print JSON.")
    parser.add_argument("--preset", default="small", choices=list(PRESETS),
                        help="Internal, with --measure_memory_of: the preset to measure.")
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """Bad numbers end in `error: ...` (argparse's usage error) before any model is built."""
    for name in ("seq_len", "batch_size", "steps", "prompt_len", "new_tokens", "gpu_vocab_size", "gpu_seq_len",
                 "gpu_batch_size", "gpu_new_tokens", "peak_tflops", "gpu_time_budget"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    for name in ("warmup", "train_script_steps"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be zero or positive, got {getattr(args, name)}")
    if args.vocab_size < 3:
        parser.error(f"--vocab_size must be at least 3 (pad, bos and eos are ids 0, 1, 2), got {args.vocab_size}")
    if args.threads is not None and args.threads <= 0:
        parser.error(f"--threads must be positive, got {args.threads}")
    if not 0 < args.mlm_probability < 1:
        parser.error(f"--mlm_probability must lie in (0, 1), got {args.mlm_probability}")
    if any(size <= 0 for size in args.generate_batch_sizes):
        parser.error(f"--generate_batch_sizes must all be positive, got {args.generate_batch_sizes}")
    for preset in args.presets if not args.skip_cpu else []:
        limit = PRESETS[preset]["max_position_embeddings"]
        if max(args.seq_len, args.prompt_len + args.new_tokens) > limit:
            parser.error(f"--seq_len {args.seq_len} (or --prompt_len + --new_tokens "
                         f"{args.prompt_len + args.new_tokens}) exceeds the {preset} preset's max_position_embeddings "
                         f"({limit})")


def build_model(name: str, preset: str, vocab_size: int, logits_with_loss: str) -> torch.nn.Module:
    """One contender at the preset's sizes, ReLU feed-forward, dropout off; pad/bos/eos ids 0/1/2 for all."""
    sizes = PRESETS[preset]
    torch.manual_seed(0)
    if name.startswith("ours"):
        mode = logits_with_loss if name.endswith("tuned") else "all"
        config = config_from_preset(preset, vocab_size=vocab_size, is_decoder="causal" in name,
                                    hidden_dropout_prob=0.0, attention_dropout=0.0, logits_with_loss=mode)
        return (MiniTransformerForCausalLM if "causal" in name else MiniTransformerForMaskedLM)(config)
    if name == "gpt2":
        config = GPT2Config(n_layer=sizes["num_hidden_layers"], n_embd=sizes["hidden_size"],
                            n_head=sizes["num_attention_heads"], n_inner=sizes["intermediate_size"],
                            n_positions=sizes["max_position_embeddings"], vocab_size=vocab_size,
                            activation_function="relu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                            pad_token_id=0, bos_token_id=1, eos_token_id=2)
        return GPT2LMHeadModel(config)
    config = BertConfig(num_hidden_layers=sizes["num_hidden_layers"], hidden_size=sizes["hidden_size"],
                        num_attention_heads=sizes["num_attention_heads"], intermediate_size=sizes["intermediate_size"],
                        max_position_embeddings=sizes["max_position_embeddings"], vocab_size=vocab_size,
                        hidden_act="relu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0)
    return BertForMaskedLM(config)


def make_batch(name: str, vocab_size: int, batch_size: int, seq_len: int, mlm_probability: float,
               device: str = "cpu") -> dict[str, torch.Tensor]:
    """Random tokens; causal labels are the inputs, masked-LM labels are -100 except at masked positions."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, vocab_size, (batch_size, seq_len), generator=generator)
    labels = input_ids.clone()
    if name in MASKED:
        masked = torch.rand(batch_size, seq_len, generator=generator) < mlm_probability
        masked[:, 0] = True  # never an empty loss
        labels[~masked] = -100
        input_ids = input_ids.masked_fill(masked, 3)  # a stand-in [MASK] id
    return {"input_ids": input_ids.to(device), "labels": labels.to(device)}


def train_step(model: Callable, optimizer: torch.optim.Optimizer, batch: dict, autocast: bool = False) -> float:
    """Seconds for forward + backward + AdamW step + zero_grad (waiting for the GPU when there is one)."""
    start = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved_medians(runs: dict[str, Callable[[], float]], steps: int, warmup: int) -> dict[str, float]:
    """Warm every run up, then time one call of each per round; the median of each over `steps` rounds."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    times = {name: [] for name in runs}
    for _ in range(steps):
        for name, run in runs.items():
            times[name].append(run())
    return {name: statistics.median(values) for name, values in times.items()}


def time_training(preset: str, args: argparse.Namespace) -> dict[str, float]:
    """Median train-step seconds of the six contenders, interleaved."""
    runs = {}
    for name in CAUSAL + MASKED:
        model = build_model(name, preset, args.vocab_size, args.logits_with_loss).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        batch = make_batch(name, args.vocab_size, args.batch_size, args.seq_len, args.mlm_probability)
        runs[name] = lambda model=model, optimizer=optimizer, batch=batch: train_step(model, optimizer, batch)
    return interleaved_medians(runs, args.steps, args.warmup)


def generate_seconds(model: torch.nn.Module, prompt: torch.Tensor, config: GenerationConfig) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=config)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start_length = 1 if model.config.is_encoder_decoder else prompt.shape[1]  # the decoder starts from one token
    assert output.shape[1] == start_length + config.max_new_tokens, "generation stopped early"
    return time.perf_counter() - start


def generation_config(new_tokens: int, **kwargs) -> GenerationConfig:
    # No end-of-sequence token: every call generates exactly `new_tokens`, so the runs compare like with like.
    return GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0, **kwargs)


def time_generation(preset: str, batch_size: int, args: argparse.Namespace) -> dict[str, float]:
    """Median greedy-generation tokens/s (new tokens of the whole batch per second) of ours and GPT-2."""
    config = generation_config(args.new_tokens)
    prompt = make_batch("gpt2", args.vocab_size, batch_size, args.prompt_len, 0.0)["input_ids"]
    runs = {}
    for name in ("gpt2", "ours-causal"):
        model = build_model(name, preset, args.vocab_size, "all").eval()
        runs[name] = lambda model=model: generate_seconds(model, prompt, config)
    seconds = interleaved_medians(runs, args.steps, args.warmup)
    return {name: batch_size * args.new_tokens / value for name, value in seconds.items()}


def resident_bytes(field: str) -> int:
    """Resident bytes of this process from Linux's /proc/self/status: "VmRSS" now, "VmHWM" its high-water mark.

    Not `getrusage`'s maxrss: Linux carries that over from the parent across fork and exec, so a child started by a
    big process reports the parent's size.
    """
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024  # kB


def step_peak_tensor_bytes(run: Callable[[], float]) -> int:
    """Largest total of tensor bytes allocated during `run()` and not yet freed, from the profiler's memory events."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profiler:
        run()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        profiler.export_chrome_trace(path)
        with open(path) as trace:
            events = json.load(trace)["traceEvents"]
    totals = [event["args"]["Total Allocated"] for event in events if event.get("name") == "[memory]"]
    return max(totals, default=0)


def measure_memory(args: argparse.Namespace) -> dict[str, int]:
    """In a fresh process: RSS growth over `args.warmup` train steps, then the tensor peak of one more step."""
    name = args.measure_memory_of
    try:  # reset the high-water mark to the resident size now (Linux >= 4.0), so imports do not count
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass
    rss_before = resident_bytes("VmRSS")
    model = build_model(name, args.preset, args.vocab_size, args.logits_with_loss).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = make_batch(name, args.vocab_size, args.batch_size, args.seq_len, args.mlm_probability)
    for _ in range(max(args.warmup, 1)):  # the first step allocates AdamW's state
        train_step(model, optimizer, batch)
    rss_growth = resident_bytes("VmHWM") - rss_before
    step_peak = step_peak_tensor_bytes(lambda: train_step(model, optimizer, batch))
    return {"rss_growth": rss_growth, "step_peak": step_peak}


def memory_in_fresh_process(name: str, preset: str, args: argparse.Namespace) -> dict[str, int]:
    command = [sys.executable, __file__, "--measure_memory_of", name, "--preset", preset,
               "--vocab_size", str(args.vocab_size), "--seq_len", str(args.seq_len),
               "--batch_size", str(args.batch_size), "--mlm_probability", str(args.mlm_probability),
               "--logits_with_loss", args.logits_with_loss, "--warmup", str(args.warmup)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def table_row(label: str, reference: float, ours: float, tuned: float | None = None, digits: int = 1) -> str:
    cells = [label, f"{reference:.{digits}f}", f"{ours:.{digits}f}", f"{ours / reference:.2f}x"]
    cells += ["", ""] if tuned is None else [f"{tuned:.{digits}f}", f"{tuned / reference:.2f}x"]
    return "| " + " | ".join(cells) + " |"


def cpu_section(preset: str, args: argparse.Namespace):
    """Measure one preset on the CPU and print its markdown table."""
    sizes = PRESETS[preset]
    seconds = time_training(preset, args)
    tokens_per_second = {size: time_generation(preset, size, args) for size in args.generate_batch_sizes}
    memory = {name: memory_in_fresh_process(name, preset, args) for name in CAUSAL + MASKED}
    print(f"\n### {preset}: hidden {sizes['hidden_size']}, {sizes['num_hidden_layers']} layers, "
          f"{sizes['num_attention_heads']} heads, FFN {sizes['intermediate_size']}; vocabulary {args.vocab_size}, "
          f"batch {args.batch_size} x {args.seq_len} tokens\n")
    print(f'| | reference | ours (default) | ours / ref | ours (logits_with_loss="{args.logits_with_loss}") '
          "| ours / ref |")
    print("|---|---:|---:|---:|---:|---:|")
    for task, (reference, ours, tuned) in (("causal vs GPT-2", CAUSAL), ("masked LM vs BERT", MASKED)):
        print(table_row(f"{task}: train step, ms", *(seconds[name] * 1000 for name in (reference, ours, tuned))))
        for key, what in (("rss_growth", "peak RSS growth"), ("step_peak", "step peak tensors")):
            print(table_row(f"{task}: {what}, MiB", *(memory[name][key] / MIB for name in (reference, ours, tuned))))
        if task.startswith("causal"):
            for size, rates in tokens_per_second.items():
                label = f"causal vs GPT-2: greedy generate, batch {size}, tokens/s"
                print(table_row(label, rates["gpt2"], rates["ours-causal"]))
    sys.stdout.flush()


def bare_tokens_per_second(preset: str, args: argparse.Namespace) -> float:
    """Median tokens/s of the bare train step of the causal LM train.py builds (preset config, dropout on)."""
    torch.manual_seed(0)
    model = MiniTransformerForCausalLM(config_from_preset(preset, vocab_size=args.vocab_size, is_decoder=True)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    batch = make_batch("ours-causal", args.vocab_size, args.batch_size, args.seq_len, 0.0)
    seconds = interleaved_medians({"bare": lambda: train_step(model, optimizer, batch)}, args.steps, args.warmup)
    return args.batch_size * args.seq_len / seconds["bare"]


def train_script_section(preset: str, args: argparse.Namespace):
    """scripts/train.py's logged tokens/s against the bare train step of the same model at the same shapes.

    The script runs in a fresh process on the embedded corpus (1 MB of it) with the preset's default config (dropout
    on, as trained); its tokens/s are the medians of its logging windows after the first. The bare step (forward,
    backward, AdamW, zero_grad on random tokens) is timed just before and just after, and both medians are printed.
    """
    every = max(1, args.train_script_steps // 6)
    with tempfile.TemporaryDirectory() as output_dir:
        command = [sys.executable, str(Path(__file__).resolve().parent / "train.py"), "--model_config", preset,
                   "--output_dir", output_dir, "--max_train_steps", str(args.train_script_steps),
                   "--logging_steps", str(every), "--block_size", str(args.seq_len), "--per_device_train_batch_size",
                   str(args.batch_size), "--vocab_size", str(args.vocab_size), "--max_corpus_bytes", "1000000",
                   "--report_to", "none"]
        env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
        before = bare_tokens_per_second(preset, args)
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"scripts/train.py failed:\n{result.stderr[-3000:]}")
        after = bare_tokens_per_second(preset, args)
        log = [json.loads(line) for line in (Path(output_dir) / "train_log.jsonl").read_text().splitlines()]
    windows = [record["tokens_per_s"] for record in log if "tokens_per_s" in record][1:]
    script = statistics.median(windows)
    print(f"\n### {preset}: scripts/train.py against the bare train step, batch {args.batch_size} x {args.seq_len}, "
          f"vocabulary {args.vocab_size}\n")
    print("| | bare step before | train.py | bare step after | train.py / bare (mean of both) |")
    print("|---|---:|---:|---:|---:|")
    print(f"| tokens/s | {before:.0f} | {script:.0f} | {after:.0f} | {script / ((before + after) / 2):.2f}x |")
    sys.stdout.flush()


def build_seq2seq(name: str, vocab_size: int, layers: int) -> torch.nn.Module:
    """MarianMTModel at opus-mt-en-de's shapes (post-LN, SiLU, sinusoidal positions, tied embeddings), random
    weights, dropout off, pad / decoder start 58100 and eos 0; "ours" is that model converted (the same weights)."""
    sizes = OPUS_MT_EN_DE
    torch.manual_seed(0)
    config = MarianConfig(vocab_size=vocab_size, d_model=sizes["d_model"], encoder_layers=layers,
                          decoder_layers=layers, encoder_attention_heads=sizes["heads"],
                          decoder_attention_heads=sizes["heads"], encoder_ffn_dim=sizes["ffn"],
                          decoder_ffn_dim=sizes["ffn"], activation_function="swish", scale_embedding=True,
                          max_position_embeddings=512, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                          pad_token_id=vocab_size - 1, eos_token_id=0, decoder_start_token_id=vocab_size - 1)
    marian = MarianMTModel(config).eval()
    return marian if name == "marian" else convert_model(marian)[0]


def ctranslate2_run(model: MarianMTModel, folder: str, quantization: str) -> Callable | None:
    """CTranslate2 (the `bench` extra) on the Marian model's own weights, as `seconds(source, new_tokens)`: greedy
    translation of the (batch, length) ids, exactly `new_tokens` target tokens per row. Its converter reads the saved
    folder, whose tokenizer is a word-level stand-in naming token i "t{i}" (random weights have no vocabulary).
    None when ctranslate2 is not installed."""
    try:
        import ctranslate2
    except ImportError:
        return None
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    special = {0: "</s>", 1: "<unk>", model.config.pad_token_id: "<pad>"}
    vocab = {special.get(index, f"t{index}"): index for index in range(model.config.vocab_size)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                        eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    source_folder, converted = os.path.join(folder, "marian"), os.path.join(folder, f"ct2-{quantization}")
    if not os.path.isdir(source_folder):
        model.save_pretrained(source_folder)
        tokenizer.save_pretrained(source_folder)
    ctranslate2.converters.TransformersConverter(source_folder).convert(converted, quantization=quantization)
    translator = ctranslate2.Translator(converted, device="cpu", inter_threads=1,
                                        intra_threads=torch.get_num_threads())

    def seconds(source: torch.Tensor, new_tokens: int) -> float:
        batch = [[special.get(index, f"t{index}") for index in row] for row in source.tolist()]
        start = time.perf_counter()
        results = translator.translate_batch(batch, beam_size=1, max_decoding_length=new_tokens,
                                             min_decoding_length=new_tokens)
        elapsed = time.perf_counter() - start
        assert all(len(result.hypotheses[0]) == new_tokens for result in results), "translation stopped early"
        return elapsed

    return seconds


def int8_run(reference: torch.nn.Module, args: argparse.Namespace) -> tuple[Callable, str, float] | None:
    """A copy of the float32 `reference` with int8 weights and activations (`hf_minitransformer.quantization`,
    oneDNN), as `seconds(source, new_tokens)` with the static-cache `generate` (compiled on the CPU); the line
    comparing its logits and greedy tokens with the reference's at each of --generate_batch_sizes, all in this one
    process; and its first call's seconds (the compilation). None where torch has no oneDNN int8 kernels."""
    from hf_minitransformer.quantization import quantize_int8

    try:
        model = quantize_int8(copy.deepcopy(reference))
    except RuntimeError as error:
        print(f"\nInt8 row skipped: {error}")
        return None
    first = make_batch("gpt2", args.seq2seq_vocab_size, 1, args.seq2seq_source_len, 0.0)["input_ids"]
    config = generation_config(args.seq2seq_new_tokens)
    static = generation_config(args.seq2seq_new_tokens, cache_implementation="static")
    warm_up = first_call_seconds(model, first, static)
    differences, largest, agreements = [], [], []
    for batch_size in args.generate_batch_sizes:
        source = make_batch("gpt2", args.seq2seq_vocab_size, batch_size, args.seq2seq_source_len, 0.0)["input_ids"]
        with torch.inference_mode():
            expected = reference.generate(source, generation_config=config)
            tokens = model.generate(source, generation_config=static)
            # Both read the float32 model's greedy tokens, so every position compares the same decoder input.
            logits = [m(input_ids=source, decoder_input_ids=expected[:, :-1]).logits for m in (reference, model)]
        differences.append((logits[1] - logits[0]).abs().max().item())
        largest.append(logits[0].abs().max().item())
        agreement = (tokens[:, 1:] == expected[:, 1:]).float().mean().item()
        agreements.append(f"{agreement:.0%} at batch {batch_size}")
    line = (f"{INT8}: int8 weights and dynamic int8 activations, against ours float32, source "
            f"{args.seq2seq_source_len}, {args.seq2seq_new_tokens} greedy tokens: max |logit difference| "
            f"{max(differences):.4f} (largest |logit| {max(largest):.2f}), greedy tokens agree "
            f"{', '.join(agreements)}")

    def seconds(source: torch.Tensor, new_tokens: int) -> float:
        return generate_seconds(model, source, generation_config(new_tokens, cache_implementation="static"))

    return seconds, line, warm_up


def onnx_run(model: torch.nn.Module, prompt_len: int, vocab_size: int) -> tuple[Callable, float] | None:
    """Ours exported to ONNX (hf_minitransformer.export: transformers' exporter, dynamic cache) and run by that
    module's greedy loop on ONNX Runtime, with the threads torch has, as `seconds(prompt, new_tokens)`; and the
    export's seconds. Its logits must be `generate`'s. None when the `onnx` extra is not installed."""
    try:
        import onnxruntime

        from hf_minitransformer.export import export_for_generation, generate_greedy
    except ImportError:
        return None
    sample = make_batch("gpt2", vocab_size, 2, prompt_len, 0.0)["input_ids"]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # torch.onnx reports each of its stages on stdout
        exported = export_for_generation(model, {"input_ids": sample})
    export_seconds = time.perf_counter() - start
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # ONNX Runtime would take every core of the machine
    exported.to("cpu", session_options=options)
    with torch.inference_mode():
        expected = model.generate(sample, generation_config=generation_config(4), return_dict_in_generate=True,
                                  output_logits=True)
    # The raw logits of each step: generate's own processors (Marian's forced end of sequence at the last step)
    # change its last token, not what the model computed.
    logits = generate_greedy(exported, sample, max_new_tokens=4)[1]
    assert all(torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4) for ours, theirs in zip(logits, expected.logits)), \
        "ONNX logits differ"

    def seconds(prompt: torch.Tensor, new_tokens: int) -> float:
        start = time.perf_counter()
        generate_greedy(exported, prompt, max_new_tokens=new_tokens)  # exactly new_tokens steps, no end of sequence
        return time.perf_counter() - start

    return seconds, export_seconds


def packed_run(reference: torch.nn.Module, args: argparse.Namespace) -> tuple[Callable, float]:
    """A copy of the float32 `reference` with its output projection packed (`hf_minitransformer.packed_weights`),
    as `seconds(source, new_tokens)` with the static-cache `generate` (compiled on the CPU), and its first call's
    seconds (the compilation)."""
    from hf_minitransformer.packed_weights import pack_output_projection

    model = pack_output_projection(copy.deepcopy(reference))
    source = make_batch("gpt2", args.seq2seq_vocab_size, 1, args.seq2seq_source_len, 0.0)["input_ids"]
    warm_up = first_call_seconds(model, source, generation_config(args.seq2seq_new_tokens,
                                                                  cache_implementation="static"))

    def seconds(source: torch.Tensor, new_tokens: int) -> float:
        return generate_seconds(model, source, generation_config(new_tokens, cache_implementation="static"))

    return seconds, warm_up


def first_call_seconds(model: torch.nn.Module, prompt: torch.Tensor, config: GenerationConfig) -> float:
    """The first static-cache `generate` of a fresh model: on the CPU it compiles the decoding step (warm-up)."""
    torch._dynamo.reset()
    return generate_seconds(model, prompt, config)


def time_inference(models: dict[str, torch.nn.Module], prompt_len: int, new_tokens: int, vocab_size: int,
                   args: argparse.Namespace, others: dict | None = None) -> dict[str, dict]:
    """Per contender ("name", "default" | "static" cache): tokens/s at each batch size and time to first token at
    batch 1, medians of interleaved rounds after the warm-up (which includes the compilation, timed apart).
    `others` {(name, setting): seconds(prompt, new_tokens)} are timed in the same rounds. "matmul ms": the matrix
    products' share of ours' static step at batch 1 (`matmul_milliseconds`)."""
    others = others or {}
    results = {"warm-up": {}}
    for name, model in models.items():
        prompt = make_batch("gpt2", vocab_size, 1, prompt_len, 0.0)["input_ids"]
        results["warm-up"][name] = first_call_seconds(model, prompt,
                                                      generation_config(new_tokens, cache_implementation="static"))
    for batch_size in args.generate_batch_sizes:
        prompt = make_batch("gpt2", vocab_size, batch_size, prompt_len, 0.0)["input_ids"]
        seconds = interleaved_medians(generate_runs(models, others, prompt, new_tokens), args.steps, args.warmup)
        results[batch_size] = {key: batch_size * new_tokens / value for key, value in seconds.items()}
    prompt = make_batch("gpt2", vocab_size, 1, prompt_len, 0.0)["input_ids"]
    results["first token"] = interleaved_medians(generate_runs(models, others, prompt, 1), args.steps, args.warmup)
    results["matmul ms"] = matmul_milliseconds(models["ours"], prompt, new_tokens)
    return results


def generate_runs(models: dict[str, torch.nn.Module], others: dict, prompt: torch.Tensor, new_tokens: int) -> dict:
    """{(name, "default" | "static"): a call timing one `generate` of `new_tokens` from `prompt`} for every model,
    and `others` on the same prompt."""
    runs = {}
    for name, model in models.items():
        for cache in ("default", "static"):
            extra = {"cache_implementation": "static"} if cache == "static" else {}
            config = generation_config(new_tokens, **extra)
            runs[name, cache] = lambda model=model, config=config: generate_seconds(model, prompt, config)
    for key, run in others.items():
        runs[key] = lambda run=run: run(prompt, new_tokens)
    return runs


def matmul_milliseconds(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> float:
    """Milliseconds per generated token that ours' static-cache `generate` (compiled, warm) spends in the torch
    kernels of matrix products (MATMUL_OPS, self time by torch.profiler): a `new_tokens` call minus a 1-token call,
    so the prompt's (or source's) forward is left out."""
    from torch.profiler import ProfilerActivity, profile

    spent = {}
    for tokens in (new_tokens, 1):
        config = generation_config(tokens, cache_implementation="static")
        generate_seconds(model, prompt, config)  # a new length can recompile: keep that out of the profile
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            generate_seconds(model, prompt, config)
        spent[tokens] = sum(event.self_cpu_time_total for event in profiler.key_averages()
                            if event.key in MATMUL_OPS)
    return (spent[new_tokens] - spent[1]) / 1000 / (new_tokens - 1)


def print_matmul_floor(reference: str, results: dict):
    """How far below the reference's time matrix products alone would go: what no cut outside them can pass."""
    matmul_ms, ops = results["matmul ms"], ", ".join(sorted(MATMUL_OPS))
    ceiling = 1000 / matmul_ms
    if 1 not in results:  # --generate_batch_sizes without 1: no batch-1 rates to set the figure against
        print(f"\nMatrix products (torch.profiler, self time of {ops}): {matmul_ms:.2f} ms per token of ours static "
              f"at batch 1; with nothing else they would allow {ceiling:.0f} tokens/s.")
        return
    step_ms = 1000 / results[1]["ours", "static"]
    print(f"\nMatrix products (torch.profiler, self time of {ops}): {matmul_ms:.2f} ms of "
          f"ours static's {step_ms:.2f} ms per token at batch 1 ({matmul_ms / step_ms:.0%}). With nothing else "
          f"they would allow {ceiling:.0f} tokens/s: {ceiling / results[1][reference, 'default']:.2f}x {reference} "
          f"default, {ceiling / results[1][reference, 'static']:.2f}x {reference} static.")


def print_inference_table(title: str, reference: str, results: dict):
    """tokens/s and time to first token per contender, and the ratios of ours to each other contender."""
    print(f"\n### {title}\n")
    batch_sizes = [key for key in results if isinstance(key, int)]
    header = " | ".join(f"batch {size}, tokens/s" for size in batch_sizes)
    print(f"| contender | {header} | first token, ms | first call (warm-up), s |")
    print("|---|" + "---:|" * (len(batch_sizes) + 2))
    for name, cache in results[batch_sizes[0]]:
        rates = " | ".join(f"{results[size][name, cache]:.0f}" for size in batch_sizes)
        warm_up = f"{results['warm-up'][name]:.1f}" if cache != "default" and name in results["warm-up"] else ""
        label = f"{name}, {cache}" + (" generate" if cache in ("default", "static") else "")
        label += " (compiled on the CPU)" if cache == "static" and name in ("ours", INT8, PACKED) else ""
        print(f"| {label} | {rates} | {results['first token'][name, cache] * 1000:.1f} | {warm_up} |")
    print("\n| ratio (tokens/s) | " + " | ".join(f"batch {size}" for size in batch_sizes) + " |")
    print("|---|" + "---:|" * len(batch_sizes))
    pairs = [("default", (reference, "default")), ("static", (reference, "default")),
             ("static", (reference, "static"))]
    pairs = [(("ours", ours), theirs) for ours, theirs in pairs]
    pairs += [(("ours", "static"), key) for key in results[batch_sizes[0]]
              if key[0] not in ("ours", reference, INT8, PACKED)]
    if (PACKED, "static") in results[batch_sizes[0]]:
        pairs += [((PACKED, "static"), theirs) for theirs in (("ours", "static"), ("ctranslate2", "float32"))
                  if theirs in results[batch_sizes[0]]]
    if (INT8, "static") in results[batch_sizes[0]]:
        pairs.append(((INT8, "static"), ("ours", "static")))
        if ("ctranslate2", "int8") in results[batch_sizes[0]]:
            pairs.append(((INT8, "static"), ("ctranslate2", "int8")))
    for ours, theirs in pairs:
        ratios = " | ".join(f"{results[size][ours] / results[size][theirs]:.2f}x" for size in batch_sizes)
        print(f"| {' '.join(ours)} / {' '.join(theirs)} | {ratios} |")
    sys.stdout.flush()


def inference_section(args: argparse.Namespace):
    """Greedy generation on the CPU at each of --generate_batch_sizes: the causal LM of the small preset against
    GPT-2, the encoder-decoder at opus-mt-en-de sizes against MarianMTModel; each with the default `generate` and
    with `cache_implementation="static"` (which our models compile on the CPU). The encoder-decoder also meets
    CTranslate2, float32 and int8 (the `bench` extra), and ours with int8 weights (hf_minitransformer.quantization),
    whose logits and greedy tokens are compared with float32 in one line under the table."""
    causal = {"gpt2": build_model("gpt2", args.inference_preset, args.vocab_size, "all").eval(),
              "ours": build_model("ours-causal", args.inference_preset, args.vocab_size, "all").eval()}
    onnx = onnx_run(causal["ours"], args.prompt_len, args.vocab_size)
    results = time_inference(causal, args.prompt_len, args.inference_new_tokens, args.vocab_size, args,
                             {ONNX: onnx[0]} if onnx else None)
    if onnx:
        results["warm-up"][ONNX[0]] = onnx[1]
    print_inference_table(f"Inference, causal LM: {args.inference_preset} preset, vocabulary {args.vocab_size}, "
                          f"prompt {args.prompt_len}, {args.inference_new_tokens} new tokens, greedy", "gpt2", results)
    print_matmul_floor("gpt2", results)
    del causal
    seq2seq = {name: build_seq2seq(name, args.seq2seq_vocab_size, args.seq2seq_layers) for name in ("marian", "ours")}
    with tempfile.TemporaryDirectory() as folder:
        others = {}
        for quantization in ("float32", "int8"):
            run = ctranslate2_run(seq2seq["marian"], folder, quantization)
            if run is not None:
                others["ctranslate2", quantization] = run
        int8 = int8_run(seq2seq["ours"], args)
        if int8 is not None:
            others[INT8, "static"] = int8[0]
        packed, packed_warm_up = packed_run(seq2seq["ours"], args)
        others[PACKED, "static"] = packed
        onnx = onnx_run(seq2seq["ours"], args.seq2seq_source_len, args.seq2seq_vocab_size)
        if onnx:
            others[ONNX] = onnx[0]
        results = time_inference(seq2seq, args.seq2seq_source_len, args.seq2seq_new_tokens,
                                 args.seq2seq_vocab_size, args, others)
        if int8 is not None:
            results["warm-up"][INT8] = int8[2]
        results["warm-up"][PACKED] = packed_warm_up
        if onnx:
            results["warm-up"][ONNX[0]] = onnx[1]
    print_inference_table(f"Inference, encoder-decoder: opus-mt-en-de sizes ({args.seq2seq_layers} + "
                          f"{args.seq2seq_layers} layers, vocabulary {args.seq2seq_vocab_size}), source "
                          f"{args.seq2seq_source_len}, {args.seq2seq_new_tokens} new tokens, greedy", "marian",
                          results)
    print_matmul_floor("marian", results)
    if ("ctranslate2", "int8") not in others:
        print("\nCTranslate2 rows skipped: ctranslate2 is not installed (pip install -e .[bench]).")
    if onnx is None:
        print("\nONNX Runtime rows skipped: the onnx extra is not installed (pip install -e .[onnx]).")
    if int8 is not None:
        print(f"\n{int8[1]}")


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """6N + 12 L d T (Kaplan et al. / PaLM), N without position tables (they cost no matmul)."""
    config = model.config
    params = sum(p.numel() for name, p in model.named_parameters() if "wpe" not in name)
    return 6 * params + 12 * config.num_hidden_layers * config.hidden_size * seq_len


def gpu_training(args: argparse.Namespace, deadline: float):
    """bf16 autocast train steps on the GPU, eager and compiled, interleaved: tokens/s, MFU, peak memory."""
    runs, flops, peaks = {}, {}, {}
    for name in ("gpt2", "ours-causal-tuned"):
        for compiled in (False, True):
            if time.perf_counter() > deadline:
                print(f"- skipped {name} compiled={compiled}: over --gpu_time_budget")
                continue
            label = f"{name}{' compiled' if compiled else ''}"
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()  # the models built so far stay: subtract them
            model = build_model(name, args.gpu_preset, args.gpu_vocab_size, args.logits_with_loss).cuda().train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
            batch = make_batch(name, args.gpu_vocab_size, args.gpu_batch_size, args.gpu_seq_len, 0.0, "cuda")
            step_model = torch.compile(model) if compiled else model
            try:
                for _ in range(max(args.warmup, 2)):  # compiles; the first step allocates AdamW's state
                    train_step(step_model, optimizer, batch, autocast=True)
                peaks[label] = (torch.cuda.max_memory_allocated() - before) / 2**30
            except Exception as error:  # noqa: BLE001 - report and go on: this runs unattended
                print(f"- {label} failed: {type(error).__name__}: {error}"[:500])
                continue
            runs[label] = lambda m=step_model, o=optimizer, b=batch: train_step(m, o, b, autocast=True)
            flops[label] = flops_per_token(model, args.gpu_seq_len)
    seconds = interleaved_medians(runs, args.steps, 0)
    tokens = args.gpu_batch_size * args.gpu_seq_len
    print("\n| bf16 train step | ms | tokens/s | MFU | peak GiB (weights, grads, AdamW, activations) |")
    print("|---|---:|---:|---:|---:|")
    for label, value in seconds.items():
        mfu = flops[label] * tokens / value / (args.peak_tflops * 1e12)
        print(f"| {label} | {value * 1000:.1f} | {tokens / value:,.0f} | {mfu:.1%} | {peaks[label]:.2f} |")
    sys.stdout.flush()


def gpu_generation(args: argparse.Namespace, deadline: float):
    """Batch-1 greedy generation on the GPU in bf16 weights: default `generate` and static cache (compiled)."""
    prompt = make_batch("gpt2", args.gpu_vocab_size, 1, args.prompt_len, 0.0, "cuda")["input_ids"]
    print(f"\n| batch-1 greedy generate, {args.gpu_new_tokens} new tokens | tokens/s |")
    print("|---|---:|")
    rates = {}
    for name in ("gpt2", "ours-causal"):
        model = build_model(name, args.gpu_preset, args.gpu_vocab_size, "all").to("cuda", torch.bfloat16).eval()
        for cache in ("dynamic", "static"):
            if time.perf_counter() > deadline:
                print(f"| {name}, {cache} cache | skipped: over --gpu_time_budget |")
                continue
            extra = {"cache_implementation": "static"} if cache == "static" else {}
            config = generation_config(args.gpu_new_tokens, **extra)
            try:
                seconds = interleaved_medians({name: lambda: generate_seconds(model, prompt, config)}, 3, 2)
                rates[name, cache] = args.gpu_new_tokens / seconds[name]
                print(f"| {name}, {cache} cache{' (compiled by generate)' if extra else ''} | "
                      f"{rates[name, cache]:,.0f} |")
            except Exception as error:  # noqa: BLE001 - report and go on: this runs unattended
                print(f"| {name}, {cache} cache | failed: {type(error).__name__}: {str(error)[:300]} |")
            sys.stdout.flush()
    for ours in ("dynamic", "static"):
        for theirs in ("dynamic", "static"):
            if ("ours-causal", ours) in rates and ("gpt2", theirs) in rates:
                ratio = rates["ours-causal", ours] / rates["gpt2", theirs]
                print(f"| ours {ours} cache / GPT-2 {theirs} cache | {ratio:.2f}x |")


def gpu_section(args: argparse.Namespace):
    if not torch.cuda.is_available():
        print("\nGPU section skipped: CUDA is not available.")
        return
    deadline = time.perf_counter() + args.gpu_time_budget
    sizes = PRESETS[args.gpu_preset]
    print(f"\n### GPU: {torch.cuda.get_device_name()}, {args.gpu_preset} (hidden {sizes['hidden_size']}, "
          f"{sizes['num_hidden_layers']} layers), vocabulary {args.gpu_vocab_size}, batch {args.gpu_batch_size} x "
          f"{args.gpu_seq_len}, bf16 autocast, MFU over {args.peak_tflops:g} TFLOPS")
    torch.backends.cuda.matmul.allow_tf32 = True
    gpu_training(args, deadline)
    gpu_generation(args, deadline)


def main():
    args = parse_args()
    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.measure_memory_of:
        print(json.dumps(measure_memory(args)))
        return
    if args.inference_only:
        print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads; torch {torch.__version__}, transformers "
              f"{transformers.__version__}; medians of {args.steps} interleaved rounds after {args.warmup} warm-up")
        inference_section(args)
        return
    if not args.skip_cpu:
        print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads; torch {torch.__version__}, transformers "
              f"{transformers.__version__}; medians of {args.steps} interleaved rounds after {args.warmup} warm-up")
        for preset in args.presets:
            cpu_section(preset, args)
            if args.train_script_steps:
                train_script_section(preset, args)
        if not args.skip_inference:
            inference_section(args)
    if not args.skip_gpu:
        gpu_section(args)


def cpu_name() -> str:
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in output.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


if __name__ == "__main__":
    main()
