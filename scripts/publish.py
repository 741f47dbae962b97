#!/usr/bin/env python
"""Turn a `scripts/train.py` output folder into a Hugging Face Hub model repository, check it, and upload it.

    # Stage and validate only, then list the files (no token, no network)
    python scripts/publish.py outputs/main_job --repo_id your-name/minitransformer-small --dry_run
    # Upload (token from HF_TOKEN or `hf auth login`); --revision pushes to a branch, --create_pr opens a PR
    python scripts/publish.py outputs/main_job --repo_id your-name/minitransformer-small --private

Steps, each of which stops the publish with a message saying what is wrong:
1. check the inputs: a training output folder whose files are the ones its training_summary.json records (sizes
   and sha256), a valid repo id, a license id the Hub knows, and a token for a real upload;
2. stage into a new folder, written under a temporary name and renamed when complete: sharded safetensors weights,
   config.json with `auto_map` for every head it serves, the configuration, modeling and pipeline code, tokenizer,
   generation config, README.md rendered from the top-level model_card.md, a PNG of the loss curves, and
   .publish-staging.json (every staged file; not uploaded), which lets a later call (after a dry run, or a failed
   validation or upload) recognise the folder as its own and stage it again;
3. validate in a fresh, offline subprocess in which `hf_minitransformer` cannot be imported: the config, every Auto
   class and the tokenizer load with `trust_remote_code=True`, the weights and logits equal this process's, a
   pipeline runs, and the card's metadata parses;
4. upload with `huggingface_hub` (`create_repo` + `upload_folder`) and print the commit URL.
"""

import argparse
import html
import json
import math
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import torch
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.utils import validate_repo_id
from transformers import AutoTokenizer

import hf_minitransformer  # noqa: F401  (registers MiniTransformer with the Auto classes)
from hf_minitransformer.atomic_files import folder_renamed_into_place
from hf_minitransformer.manifest import write_folder_record, written_folder_problem
from hf_minitransformer.training.run_folder import read_finished_run
from hf_minitransformer.training.tasks import TASKS


REPO_ROOT = Path(__file__).resolve().parent.parent
CARD_TEMPLATE = REPO_ROOT / "model_card.md"
VALIDATE_SCRIPT = Path(__file__).resolve().parent / "validate_hub_folder.py"
LOSS_PLOT = "loss_curves.png"
# Sequence-level metrics of a seq2seq summary's final_eval, as model-index results: key -> (type, display name).
SEQUENCE_METRICS = {"bleu": ("bleu", "BLEU"), "chrf": ("chrf", "chrF"), "exact_match": ("exact_match", "Exact match")}
TEXT_SUFFIXES = (".json", ".md", ".py", ".txt", ".jinja", ".yaml")
STAGING_RECORD = ".publish-staging.json"  # written last into the staged folder; never uploaded
# The license identifiers a Hub card's `license` accepts, as the Hub's documentation lists them
# (https://huggingface.co/docs/hub/repositories-licenses, huggingface/hub-docs docs/hub/repositories-licenses.md);
# huggingface_hub ships no such list. "other" asks for the license's text in a LICENSE file of the repository.
HUB_LICENSES = (
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m", "bigscience-bloom-rail-1.0",
    "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause",
    "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0",
    "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0",
    "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "cdla-sharing-1.0",
    "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0", "etalab-2.0", "eupl-1.1",
    "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "isc", "lppl-1.3c", "ms-pl",
    "mpl-2.0", "odc-by", "odbl", "openrail++", "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib",
    "pddl", "lgpl-lr", "deepfloyd-if-license", "llama2", "gemma", "unknown", "other",
)


class ValidationError(RuntimeError):
    """The staged folder does not load or behave as it must; nothing was uploaded."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="The --output_dir of scripts/train.py.")
    parser.add_argument("--repo_id", required=True, help="Hub repository, 'user-or-org/name'.")
    parser.add_argument("--staging_dir", default=None,
                        help="Where the repository folder is staged (default: MODEL_DIR-hub). Must not exist, unless "
                             "an earlier publish.py staged it (it is then staged again).")
    parser.add_argument("--max_shard_size", default="2GB", help="Largest safetensors shard, e.g. '500MB', '2GB'.")
    parser.add_argument("--license", default="apache-2.0",
                        help="License identifier for the card's metadata, one the Hub knows (apache-2.0, mit, "
                             "cc-by-4.0, ...: https://huggingface.co/docs/hub/repositories-licenses).")
    parser.add_argument("--private", action="store_true", help="Create the repository as private.")
    parser.add_argument("--revision", default=None, help="Branch to upload to (created if missing); default main.")
    parser.add_argument("--create_pr", action="store_true", help="Open a pull request instead of committing.")
    parser.add_argument("--commit_message", default="Upload MiniTransformer", help="Commit message of the upload.")
    parser.add_argument("--token", default=None, help="Hub token; default HF_TOKEN or the `hf auth login` token.")
    parser.add_argument("--dry_run", action="store_true",
                        help="Stop after staging and validation and list the files with their sizes.")
    args = parser.parse_args(argv)
    if args.license not in HUB_LICENSES:
        known = next((name for name in HUB_LICENSES if name == "-".join(args.license.lower().split())), None)
        parser.error(f"--license must be a license identifier of the Hub, got {args.license!r}"
                     + (f" (did you mean {known!r}?)" if known else "")
                     + "; see https://huggingface.co/docs/hub/repositories-licenses, or pass 'other' and add the "
                     "license text as a LICENSE file")
    return args


def main(argv: list[str] | None = None, api: HfApi | None = None) -> Path:
    """Publish; returns the staged folder. `api` replaces the Hub client (tests use one that records calls)."""
    args = parse_args(argv)
    summary, token = check_inputs(args)
    staged, model = stage(args, summary)
    validate(staged, model, summary["task"])
    if args.dry_run:
        print(f"Dry run: {staged} is ready to upload to {args.repo_id}:")
        for path in sorted(p for p in staged.rglob("*") if p.is_file() and p.name != STAGING_RECORD):
            print(f"  {path.relative_to(staged)}  {path.stat().st_size:,} bytes")
        return staged
    upload(staged, args, api or HfApi(token=token))
    return staged


def check_inputs(args: argparse.Namespace) -> tuple[dict, str | None]:
    """Every check that needs no work, before anything is written: returns the training summary and the token."""
    model_dir = Path(args.model_dir)
    summary = read_finished_run(model_dir)  # one run's files, as it wrote them (their checksums)
    check_metrics(summary)
    validate_repo_id(args.repo_id)  # HFValidationError, a ValueError, names the bad id
    if "/" not in args.repo_id:
        raise ValueError(f"--repo_id must be 'user-or-org/name', got {args.repo_id!r}.")
    staging = Path(args.staging_dir or f"{model_dir}-hub")
    check_staging(staging, model_dir)
    args.staging_dir = str(staging)
    token = None
    if not args.dry_run:
        token = args.token or get_token()
        if not token:
            raise ValueError("No Hugging Face token for the upload: set HF_TOKEN, run `hf auth login`, or pass "
                             "--token (or use --dry_run to stage and validate only).")
    return summary, token


def check_metrics(summary: dict):
    """The card reports every final_eval metric as a number: each must be finite (a NaN loss or an infinite
    perplexity means the evaluation scored nothing or diverged, and is no result to publish)."""
    final_eval = summary.get("final_eval") or {}
    for key in ["loss", "perplexity", *(key for key in SEQUENCE_METRICS if key in final_eval)]:
        value = final_eval.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"training_summary.json has final_eval {key} = {value!r}; a model card reports finite "
                             "numbers only. Evaluate the model on data it can score before publishing it.")


def check_staging(staging: Path, model_dir: Path):
    """An existing staging folder is staged again only if publish.py staged it and nothing in it changed since (a dry
    run, a failed validation or a failed upload leave it behind); anything else there is refused, never replaced."""
    if not staging.exists():
        return
    if not staging.is_dir():
        raise ValueError(f"Staging folder {str(staging)!r} is a file; remove it or pass another --staging_dir.")
    if staging.resolve() in (model_dir.resolve(), *model_dir.resolve().parents):
        raise ValueError(f"Staging folder {str(staging)!r} holds the training output {str(model_dir)!r}; pass "
                         "another --staging_dir.")
    problem = written_folder_problem(staging, STAGING_RECORD)
    if problem is not None:
        raise ValueError(f"Staging folder {str(staging)!r} already exists and is not one publish.py staged, unchanged "
                         f"since: {problem}. Remove it, or pass another --staging_dir.")


def local_paths(model_dir: Path, summary: dict) -> list[str]:
    """Absolute paths of this machine that must not appear in a published file."""
    paths = {str(model_dir.resolve().parent), str(Path.cwd()), str(Path.home()), str(REPO_ROOT), sys.prefix,
             sys.base_prefix, sysconfig.get_paths()["stdlib"], tempfile.gettempdir()}
    data_args = summary.get("data", {}).get("args") or {}
    for name in ("train_file", "validation_file", "dataset_name"):
        if data_args.get(name) and Path(data_args[name]).exists():  # a local file or dataset folder
            paths.add(str(Path(data_args[name]).resolve().parent))
    return sorted((path for path in paths if len(Path(path).parts) > 2 or path == str(Path.home())),
                  key=len, reverse=True)


def check_no_local_paths(folder: Path, model_dir: Path, summary: dict):
    """Refuse a staged file that names a local absolute path (a data file, the standard library, the home folder)."""
    paths = local_paths(model_dir, summary)
    for file in sorted(folder.rglob("*")):
        if file.suffix not in TEXT_SUFFIXES or not file.is_file():
            continue
        text = file.read_text(errors="replace")
        for path in paths:
            if path in text:
                raise ValueError(f"The staged {file.name} contains the local path {path!r}; published files must "
                                 "not name this machine's paths.")


def stage(args: argparse.Namespace, summary: dict) -> tuple[Path, torch.nn.Module]:
    """Write the repository folder under a temporary name, then rename it: a crash leaves no half-written folder.

    Returns the folder and the model loaded from the training output, which validation compares the folder against.
    """
    final = Path(args.staging_dir)
    with folder_renamed_into_place(final, replace=True) as partial:  # an earlier staging: check_staging allowed it
        task = TASKS[summary["task"]]
        model = task.auto_class.from_pretrained(args.model_dir)
        model.save_pretrained(partial, max_shard_size=args.max_shard_size)  # weights, config + auto_map, code
        AutoTokenizer.from_pretrained(args.model_dir).save_pretrained(partial)
        has_plot = plot_losses(Path(args.model_dir) / "train_log.jsonl", partial / LOSS_PLOT)
        card = render_card(args, summary, model, loss_plot=LOSS_PLOT if has_plot else None)
        card.save(partial / "README.md")
        check_no_local_paths(partial, Path(args.model_dir), summary)
        write_folder_record(partial, STAGING_RECORD, staged_by="scripts/publish.py")
    print(f"Staged {final}")
    return final, model


def render_card(args: argparse.Namespace, summary: dict, model: torch.nn.Module, loss_plot: str | None) -> ModelCard:
    """README.md from the model_card.md template: metadata from ModelCardData, body fields from config and summary."""
    task = TASKS[summary["task"]]
    name = args.repo_id.split("/")[-1]
    final_eval = summary["final_eval"]
    metrics = {"perplexity": ("perplexity", "Perplexity")}
    metrics.update({key: value for key, value in SEQUENCE_METRICS.items() if key in final_eval})
    data_name = " ".join(summary["data"]["source"].split())  # one line, whatever the file names hold
    results = [EvalResult(task_type=task.pipeline_tag, dataset_type="text", dataset_name=data_name,
                          metric_type=metric_type, metric_name=metric_name, metric_value=round(final_eval[key], 4))
               for key, (metric_type, metric_name) in metrics.items()]
    card_data = ModelCardData(license=args.license, library_name="transformers", pipeline_tag=task.pipeline_tag,
                              tags=["minitransformer", "transformer", "custom_code"], model_name=name,
                              eval_results=results)
    config = model.config
    fields = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "max_position_embeddings", "hidden_act", "position_embedding_type", "layer_norm_position", "is_decoder",
              "tie_word_embeddings"]
    if config.is_encoder_decoder:
        fields[3:3] = ["decoder_layers", "decoder_start_token_id"]
    architecture = {field: getattr(config, field) for field in fields}
    train_args = summary.get("args") or {}
    recipe = {}
    if train_args:
        recipe["optimizer"] = (
            f"AdamW, peak learning rate {train_args.get('learning_rate')}, "
            f"weight decay {train_args.get('weight_decay')}, {train_args.get('num_warmup_steps')} warmup steps, "
            f"{train_args.get('lr_scheduler_type')} schedule, gradient clipping {train_args.get('max_grad_norm')}"
        )
        recipe["batch"] = (
            f"{train_args.get('per_device_train_batch_size')} sequences per device x "
            f"{train_args.get('gradient_accumulation_steps')} accumulation steps x {summary.get('num_processes')}"
        )
    return ModelCard.from_template(
        card_data, template_path=str(CARD_TEMPLATE), model_name=name, repo_id=args.repo_id,
        head=type(model).__name__, auto_class=task.auto_class.__name__, num_parameters=model.num_parameters(),
        architecture=architecture, summary=summary, objective=task.objective, recipe=recipe, loss_plot=loss_plot,
        data_source=table_cell(summary["data"]["source"]),
    )


def table_cell(text: str) -> str:
    """`text` as one cell of a Markdown table: a file name may hold `|`, a line break or HTML, which would end the
    cell, the row or the table."""
    return " ".join(html.escape(text, quote=False).replace("|", "\\|").split())


def plot_losses(log_path: Path, out_path: Path) -> bool:
    """PNG of training and evaluation loss against optimizer steps from train_log.jsonl; False when nothing logged."""
    if not log_path.is_file():
        return False
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in records if "loss" in r and r.get("step") is not None]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r and r.get("step") is not None]
    if not train and not evals:
        return False
    try:
        import matplotlib
    except ImportError:
        print("note: matplotlib is not installed, so the card has no loss plot; to add one, install the publish "
              "extra (pip install -e '.[publish]' in the checkout, or pip install matplotlib) and publish again.")
        return False

    matplotlib.use("Agg")  # no display: render straight to the file
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for points, label, style in ((train, "training loss", "-"), (evals, "evaluation loss", "o-")):
        if points:
            ax.plot(*zip(*points), style, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return True


def validate(staged: Path, model: torch.nn.Module, task_name: str):
    """Reload the staged folder as a stranger would, in a fresh offline process without this package, and compare
    its logits with `model`'s, the training output loaded in this process."""
    model.eval()
    input_ids = torch.arange(min(12, model.config.max_position_embeddings)).unsqueeze(0) % model.config.vocab_size
    inputs = {"input_ids": input_ids}
    if model.config.is_encoder_decoder:
        inputs["decoder_input_ids"] = input_ids[:, :6].flip(-1)
    with torch.no_grad():
        logits = model(**inputs).logits
    with tempfile.TemporaryDirectory() as workdir:
        expected = Path(workdir) / "expected.pt"
        # The task's row of the table travels with the logits: the check must not import this package.
        torch.save({"inputs": inputs, "logits": logits, **TASKS[task_name].published_as()}, expected)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(Path(workdir) / "modules"), TOKENIZERS_PARALLELISM="false")
        result = subprocess.run(
            [sys.executable, str(VALIDATE_SCRIPT), str(staged.resolve()), str(expected)],
            cwd=workdir, env=env, capture_output=True, text=True, timeout=600,
        )
    if result.returncode != 0:
        detail = (result.stdout + result.stderr).strip().splitlines()[-15:]
        raise ValidationError(f"Validation of {staged} failed; nothing was uploaded:\n" + "\n".join(detail))
    print(result.stdout.strip())


def upload(staged: Path, args: argparse.Namespace, api: HfApi):
    """create_repo + upload_folder; prints the commit (or pull request) URL."""
    repo_url = api.create_repo(args.repo_id, private=args.private, exist_ok=True, repo_type="model")
    print(f"Repository {repo_url}")
    if args.revision and args.revision != "main":
        api.create_branch(args.repo_id, branch=args.revision, exist_ok=True, repo_type="model")
    commit = api.upload_folder(repo_id=args.repo_id, folder_path=staged, repo_type="model", revision=args.revision,
                               create_pr=args.create_pr, commit_message=args.commit_message,
                               ignore_patterns=[STAGING_RECORD])
    print(f"Uploaded: {commit.pr_url if args.create_pr and commit.pr_url else commit.commit_url}")
    print(f"Load it with: AutoModel.from_pretrained({args.repo_id!r}, trust_remote_code=True, "
          f"revision={commit.oid!r})")


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:  # bad input: a message, not a traceback
        raise SystemExit(f"error: {error}") from None
    except ValidationError as error:
        raise SystemExit(f"error: {error}") from None
