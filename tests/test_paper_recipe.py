"""`scripts/train.py --recipe paper` and its flags: label smoothing (transformers' LabelSmoother) on the training loss
only, Adam betas (0.9, 0.98) and eps 1e-9 without weight decay, and transformers' inverse_sqrt schedule after warmup.
"""

import math

import pytest
import torch

from .conftest import TINY_ARGS, TINY_OVERRIDES, load_script, read_log, read_summary, reset_accelerate


train = load_script("train")


# No Hub, a private datasets cache, one thread and a fresh accelerate state for every in-process run.
pytestmark = pytest.mark.usefixtures("isolated_train_runs")


def run(tmp_path, name: str, *argv: str) -> tuple[dict, list[dict]]:
    out = tmp_path / name
    train.main([*TINY_ARGS, *argv, "--output_dir", str(out)])
    reset_accelerate()
    records = read_log(out)
    return read_summary(out), [r for r in records if "loss" in r]


def test_paper_recipe_sets_its_flags_and_explicit_flags_win():
    args = train.parse_args(["--recipe", "paper"])
    assert (args.label_smoothing_factor, args.adam_beta1, args.adam_beta2, args.adam_epsilon, args.weight_decay,
            args.lr_scheduler_type) == (0.1, 0.9, 0.98, 1e-9, 0.0, "inverse_sqrt")
    args = train.parse_args(["--recipe", "paper", "--adam_beta2", "0.99", "--lr_scheduler_type", "linear"])
    assert (args.adam_beta2, args.lr_scheduler_type, args.label_smoothing_factor) == (0.99, "linear", 0.1)
    default = train.parse_args([])
    assert (default.label_smoothing_factor, default.adam_beta2, default.adam_epsilon, default.weight_decay,
            default.lr_scheduler_type) == (0.0, 0.95, 1e-8, 0.1, "cosine")
    model = torch.nn.Linear(2, 2)
    optimizer = train.build_optimizer(model, train.parse_args(["--recipe", "paper"]))
    groups = [(group["betas"], group["eps"], group["weight_decay"]) for group in optimizer.param_groups]
    assert groups == [((0.9, 0.98), 1e-9, 0.0)] * 2


@pytest.mark.parametrize("argv, message", [
    (["--label_smoothing_factor", "1.0"], "--label_smoothing_factor must lie in [0, 1), got 1.0"),
    (["--adam_beta2", "-0.1"], "--adam_beta2 must lie in [0, 1), got -0.1"),
    (["--adam_epsilon", "0"], "--adam_epsilon must be a positive number, got 0.0"),
    (["--adam_epsilon", "nan"], "--adam_epsilon must be a positive number, got nan"),
])
def test_bad_recipe_values_are_value_errors_before_any_work(tmp_path, argv, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        train.main([*TINY_ARGS, *argv, "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("task", ["clm", "mlm", "seq2seq"])
def test_label_smoothing_changes_the_training_loss_only(tmp_path, task):
    """With a learning rate of 1e-12 the weights do not move measurably, so the runs differ only in how the loss is
    taken. Smoothing eps gives (1 - eps) CE + eps (mean over the vocabulary of -log p): eps = 1e-6 must log the plain
    loss (so the smoother sees the labels aligned as the model's own loss does, shifted for clm), and the loss must
    move linearly with eps. The evaluation loss stays the plain cross-entropy in every run. (Large initial weights
    make the predictions peaked: on near-uniform predictions smoothing changes almost nothing.)"""
    common = ["--task", task, "--config_overrides", f"{TINY_OVERRIDES},initializer_range=0.5",
              "--max_train_steps", "2", "--learning_rate", "1e-12", "--logging_steps", "1",
              "--max_eval_generate_samples", "2", "--max_source_length", "48", "--max_target_length", "12",
              "--max_corpus_bytes", "200000" if task == "seq2seq" else "60000"]
    runs = {eps: run(tmp_path, f"eps{eps}", *common, *(["--label_smoothing_factor", str(eps)] if eps else []))
            for eps in (0.0, 1e-6, 0.1, 0.2)}
    losses = {eps: [record["loss"] for record in log] for eps, (_, log) in runs.items()}
    for step in range(2):
        assert losses[1e-6][step] == pytest.approx(losses[0.0][step], rel=1e-5)
        assert abs(losses[0.1][step] - losses[0.0][step]) > 1e-2
        assert losses[0.2][step] - losses[0.1][step] == pytest.approx(losses[0.1][step] - losses[0.0][step],
                                                                      rel=1e-3)
    eval_losses = [summary["final_eval"]["loss"] for summary, _ in runs.values()]
    assert eval_losses == pytest.approx([eval_losses[0]] * 4, rel=1e-6)


def test_inverse_sqrt_schedule_after_linear_warmup(tmp_path):
    _, log = run(tmp_path, "paper", "--recipe", "paper", "--learning_rate", "1e-3", "--num_warmup_steps", "4",
                 "--max_train_steps", "9", "--logging_steps", "1")
    learning_rates = [record["lr"] for record in log]
    # After s optimizer steps: s / warmup of the peak during warmup, then peak * sqrt(warmup / s).
    expected = [1e-3 * (s / 4 if s < 4 else math.sqrt(4 / s)) for s in range(1, 10)]
    assert learning_rates == pytest.approx(expected, rel=1e-6)
