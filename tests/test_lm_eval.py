"""EleutherAI's lm-evaluation-harness on a saved causal LM, through its documented command line and the folder's
remote code only: the accuracy and per-choice log-likelihoods it reports equal the model's own.

Needs the `eval` extra (`pip install -e ".[eval]"`); skipped without it.
"""

import json
import sys
from pathlib import Path

import pytest
import torch

from hf_minitransformer import MiniTransformerForCausalLM
from hf_minitransformer.data import train_bpe_tokenizer

from .conftest import SNIPPETS, make_config, readme_block, run_command, run_python, script_env


pytest.importorskip("lm_eval")

SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "the sun is hot today", "birds can fly high"]
# (context, choices): the harness scores each choice, after a space, as the continuation of the context.
QUESTIONS = [
    ("the cat sat on the", ["mat", "sun", "dog"]),
    ("a dog ran in the", ["park", "cat", "hot"]),
    ("birds can", ["fly", "sat", "swim"]),
    ("the sun is", ["hot", "high", "mat"]),
    ("the", ["cat", "dog", "park"]),
    ("a dog ran", ["in", "on", "high"]),
    ("the cat", ["sat", "ran", "can"]),
    ("birds can fly", ["high", "low", "today"]),
]
TASK_YAML = """\
task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
# The installed `lm_eval` console script itself, run under conftest's import block (a console script cannot be
# started with a prelude otherwise), so only the folder's remote code can serve the model.
RUN_CONSOLE_SCRIPT = """
import runpy
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def fit(model: MiniTransformerForCausalLM, tokenizer, steps: int = 20) -> MiniTransformerForCausalLM:
    """A few steps on SENTENCES, so the log-likelihoods depend on the context: untrained, a model this small scores a
    continuation about the same after any context (or none), and would hide a harness that dropped or misaligned it."""
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def continuation_logprob(model: MiniTransformerForCausalLM, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context), summed over the continuation's tokens, from one forward pass."""
    context_ids = tokenizer(context)["input_ids"]
    continuation_ids = tokenizer(continuation)["input_ids"]
    # The words are whole pre-tokens, so the two encodings join exactly as the harness's encoding of the whole text
    # splits; otherwise the two sides would score different tokens.
    assert tokenizer(context + continuation)["input_ids"] == context_ids + continuation_ids
    input_ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logprobs = model(input_ids).logits.log_softmax(-1)
    # The logits at position i predict token i + 1.
    scored = logprobs[0, len(context_ids) - 1 : -1].gather(-1, torch.tensor(continuation_ids)[:, None])
    return scored.sum().item()


@pytest.mark.slow  # the harness's start-up (importing it and indexing its task files) takes ~10 s
def test_lm_eval_command_line_reports_the_models_own_accuracy_and_loglikelihoods(tmp_path, monkeypatch):
    tokenizer = train_bpe_tokenizer(iter([SENTENCES]), vocab_size=300, with_mask_token=False)
    config = make_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = fit(MiniTransformerForCausalLM(config), tokenizer)
    folder = tmp_path / "model"
    # As scripts/train.py saves: the package registered the auto classes, so the code files and auto_map go along.
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert (folder / "modeling_minitransformer.py").is_file()

    expected = [[continuation_logprob(model, tokenizer, context, " " + choice) for choice in choices]
                for context, choices in QUESTIONS]
    # The gold answer is the likeliest choice in the first half and the least likely in the second: accuracy 0.5.
    half = len(QUESTIONS) // 2
    labels = [max(range(3), key=scores.__getitem__) if i < half else min(range(3), key=scores.__getitem__)
              for i, scores in enumerate(expected)]
    rows = [{"context": context, "choices": choices, "label": label}
            for (context, choices), label in zip(QUESTIONS, labels)]
    data = tmp_path / "tiny_choice.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_choice.yaml").write_text(TASK_YAML.format(data=data))

    # Every cache the harness, datasets and the Hub client could write goes under tmp_path; nothing is downloaded.
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets_cache"))
    monkeypatch.setenv("LM_HARNESS_CACHE_PATH", str(tmp_path / "lm_eval_cache"))
    console_script = Path(sys.executable).with_name("lm_eval")
    result = run_python(
        RUN_CONSOLE_SCRIPT, tmp_path, str(console_script),
        "--model", "hf", "--model_args", f"pretrained={folder},trust_remote_code=True",
        "--tasks", "tiny_choice", "--include_path", str(tasks), "--device", "cpu",
        # Batches of 4 mix lengths: the harness pads on the right, with no attention mask, and reads the real tokens.
        "--batch_size", "4", "--output_path", str(tmp_path / "results"), "--log_samples",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert (tmp_path / "datasets_cache" / "json").is_dir()  # the local jsonl went through the private cache

    report = json.loads(next((tmp_path / "results").rglob("results_*.json")).read_text())
    assert report["results"]["tiny_choice"]["acc,none"] == 0.5
    assert report["n-samples"]["tiny_choice"]["effective"] == len(QUESTIONS)
    assert report["max_length"] == config.max_position_embeddings  # read from our config's standard field name
    samples = [json.loads(line) for line in next((tmp_path / "results").rglob("samples_tiny_choice_*.jsonl")).open()]
    reported = {sample["doc_id"]: [float(loglikelihood) for loglikelihood, _ in sample["filtered_resps"]]
                for sample in samples}
    assert [[arguments["arg_1"] for arguments in sample["arguments"].values()] for sample in samples] == [
        [" " + choice for choice in QUESTIONS[sample["doc_id"]][1]] for sample in samples]
    torch.testing.assert_close(torch.tensor([reported[i] for i in range(len(QUESTIONS))], dtype=torch.float64),
                               torch.tensor(expected, dtype=torch.float64), atol=1e-4, rtol=0)


@pytest.mark.slow  # the harness's start-up and ~200 kB of held-out modules: ~30 s
def test_the_readmes_held_out_evaluation_runs_offline_as_printed(tmp_path):
    tokenizer = train_bpe_tokenizer(iter([SNIPPETS]), vocab_size=300, with_mask_token=False)
    # 1024 positions: the harness scores the text in windows of that many tokens, few enough to take seconds.
    config = make_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = MiniTransformerForCausalLM(config).eval()
    model.save_pretrained(tmp_path / "outputs" / "main_job")  # in place of the main job's folder
    tokenizer.save_pretrained(tmp_path / "outputs" / "main_job")
    env = script_env(tmp_path)
    env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", HF_DATASETS_OFFLINE="1",
               HF_HOME=str(tmp_path / "hf_home"), LM_HARNESS_CACHE_PATH=str(tmp_path / "lm_eval_cache"))
    block = readme_block("lm_eval --model hf", "bash")
    result = run_command(["bash", "-e", "-c", block], env, cwd=tmp_path, timeout=900)
    table = [line for line in result.stdout.splitlines() if "stdlib_heldout" in line or "bits_per_byte" in line]
    assert any("bits_per_byte" in line for line in table), result.stdout[-3000:]
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["lm_eval", "main_job"]

