"""scripts/benchmark.py builds like-for-like contenders and measures without crashing; it never asserts a timing."""

import pytest
import torch

from .conftest import SCRIPTS, load_script, run_command, run_script, script_env


benchmark = load_script("benchmark")


@pytest.mark.parametrize("reference, ours", [("gpt2", "ours-causal"), ("bert", "ours-masked")])
def test_contenders_have_identical_shapes(reference, ours):
    theirs = benchmark.build_model(reference, "tiny", 300, "none")
    mine = benchmark.build_model(ours, "tiny", 300, "all")
    for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"):
        assert getattr(theirs.config, name) == getattr(mine.config, name), name
    intermediate = theirs.config.n_inner if reference == "gpt2" else theirs.config.intermediate_size
    assert intermediate == mine.config.intermediate_size
    activation = theirs.config.activation_function if reference == "gpt2" else theirs.config.hidden_act
    assert activation == mine.config.hidden_act == "relu"
    for model in (theirs, mine):  # dropout off everywhere
        assert all(module.p == 0.0 for module in model.modules() if isinstance(module, torch.nn.Dropout))
    # The same matmul sizes: parameter counts differ only by biases, position tables and BERT's extra LayerNorms.
    counts = [sum(p.numel() for p in model.parameters()) for model in (theirs, mine)]
    assert abs(counts[0] - counts[1]) / counts[1] < 0.2


def test_tuned_configuration_only_changes_logits_with_loss():
    default = benchmark.build_model("ours-masked", "tiny", 300, "none")
    tuned = benchmark.build_model("ours-masked-tuned", "tiny", 300, "none")
    assert default.config.logits_with_loss == "all" and tuned.config.logits_with_loss == "none"
    batch = benchmark.make_batch("ours-masked", 300, 2, 16, 0.15)
    torch.testing.assert_close(tuned(**batch).loss, default(**batch).loss)


def test_masked_batch_scores_only_masked_positions():
    batch = benchmark.make_batch("bert", 300, 4, 32, 0.15)
    scored = batch["labels"] != -100
    assert scored[:, 0].all() and 0 < scored.float().mean() < 0.5
    assert (batch["input_ids"][scored] == 3).all()


def test_step_peak_counts_the_tensors_a_step_allocates():
    peak = benchmark.step_peak_tensor_bytes(lambda: torch.ones(1024, 1024).sum())
    assert peak >= 4 * 2**20


@pytest.mark.slow
def test_cpu_benchmark_runs_end_to_end(tmp_path):
    args = ["--presets", "tiny", "--steps", "1", "--warmup", "1", "--batch_size", "2", "--seq_len", "8",
            "--new_tokens", "2", "--generate_batch_sizes", "1", "--vocab_size", "300", "--threads", "1",
            "--train_script_steps", "3", "--skip_inference"]
    result = run_script(tmp_path, "benchmark.py", *args, timeout=600)
    assert "masked LM vs BERT: step peak tensors, MiB" in result.stdout
    assert "scripts/train.py against the bare train step" in result.stdout
    assert "GPU section skipped" in result.stdout or "### GPU" in result.stdout


def test_encoder_decoder_contenders_are_one_model():
    marian = benchmark.build_seq2seq("marian", 300, 2)
    ours = benchmark.build_seq2seq("ours", 300, 2)  # converted from the same seeded Marian model
    assert (ours.config.hidden_size, ours.config.decoder_layers, ours.config.hidden_act) == (512, 2, "silu")
    source = torch.randint(3, 299, (1, 7))
    kwargs = dict(max_new_tokens=5, do_sample=False, eos_token_id=None)
    assert torch.equal(ours.generate(source, **kwargs), marian.generate(source, **kwargs))


def test_ctranslate2_translates_the_marian_weights(tmp_path):
    pytest.importorskip("ctranslate2")
    marian = benchmark.build_seq2seq("marian", 300, 1)
    seconds = benchmark.ctranslate2_run(marian, str(tmp_path), "float32")
    assert seconds(torch.randint(3, 299, (2, 7)), 5) > 0  # asserts exactly 5 tokens per row itself


def test_int8_contender_generates_and_compares_with_float32():
    args = benchmark.parse_args(["--seq2seq_layers", "1", "--seq2seq_vocab_size", "300", "--seq2seq_source_len", "7",
                                 "--seq2seq_new_tokens", "4", "--generate_batch_sizes", "1", "8"])
    reference = benchmark.build_seq2seq("ours", args.seq2seq_vocab_size, args.seq2seq_layers)
    seconds, line, warm_up = benchmark.int8_run(reference, args)
    assert seconds(torch.randint(3, 299, (2, 7)), 5) > 0  # generate_seconds asserts exactly 5 tokens per row
    assert "max |logit difference|" in line and "greedy tokens agree 100% at batch 1, " in line
    assert "% at batch 8" in line  # both batch sizes compared in one process
    assert warm_up > 0  # the first static-cache call, timed apart


@pytest.mark.slow
def test_inference_benchmark_runs_end_to_end(tmp_path):
    args = ["--inference_only", "--inference_preset", "tiny", "--vocab_size", "300", "--steps", "1", "--warmup", "1",
            "--inference_new_tokens", "3", "--seq2seq_layers", "1", "--seq2seq_vocab_size", "300",
            "--seq2seq_new_tokens", "3", "--generate_batch_sizes", "1", "--threads", "1"]
    result = run_script(tmp_path, "benchmark.py", *args, timeout=600)
    assert "| ours static / gpt2 default |" in result.stdout
    assert "| ours static / marian default |" in result.stdout
    assert result.stdout.count("Matrix products (torch.profiler") == 2
    assert "ours int8 (oneDNN): int8 weights" in result.stdout
    assert "| ours float32, packed output projection static / ours static |" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_the_gpu_check_refuses_to_run_without_a_gpu(tmp_path):
    earlier = tmp_path / "gpu_check"
    (earlier / "summary.txt").parent.mkdir()
    (earlier / "summary.txt").write_text("an earlier check")
    env = {**script_env(tmp_path), "GPU_CHECK_DIR": str(earlier)}
    result = run_command(["bash", str(SCRIPTS / "gpu_check.sh")], env, check=False, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: no CUDA device visible to ")
    assert "summary" not in result.stdout  # nothing ran
    assert (earlier / "summary.txt").read_text() == "an earlier check"  # and nothing was removed


@pytest.mark.slow
def test_onnx_contender_computes_the_logits_of_generate():
    pytest.importorskip("onnxruntime")
    model = benchmark.build_model("ours-causal", "tiny", 300, "all").eval()
    seconds, export_seconds = benchmark.onnx_run(model, 7, 300)  # asserts generate's logits itself
    assert seconds(torch.randint(3, 299, (2, 7)), 5) > 0 and export_seconds > 0
