#!/usr/bin/env python
"""Check a staged Hub folder as a stranger would: offline, without hf_minitransformer, through remote code only.

    python scripts/validate_hub_folder.py STAGED_DIR EXPECTED.pt

`scripts/publish.py` runs this in a fresh subprocess. EXPECTED.pt holds the model `inputs` and the `logits` the
publishing process computed, and the task's row of hf_minitransformer.training.tasks.TASKS (`task`, `auto_class`,
`pipeline_tag`, `served_auto_classes`), which this process cannot import. Exits non-zero with the reason on the
first failure; prints one line per check passed.
"""

import argparse
import sys


# Make the package unimportable before anything can import it: only the folder's own code may define the model.
sys.modules["hf_minitransformer"] = None

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402
from huggingface_hub import ModelCard  # noqa: E402
from safetensors.torch import load_file  # noqa: E402


REQUIRED_METADATA = ("license", "library_name", "pipeline_tag", "model-index")


def fail(message: str):
    raise SystemExit(f"FAILED: {message}")


def saved_weights(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else [
        "model.safetensors"]
    weights = {}
    for name in files:
        weights.update(load_file(folder / name))
    return weights


def check_auto_classes(folder: Path, weights: dict[str, torch.Tensor], expected: dict):
    """Every Auto class in auto_map loads through remote code, with every stored weight it uses bit-identical."""
    config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
    if "hf_minitransformer" in type(config).__module__:
        fail("the config came from the installed package, not the folder's code")
    auto_map = getattr(config, "auto_map", {}) or {}
    missing = set(expected["served_auto_classes"]) - set(auto_map)
    if missing:
        fail(f"config.json auto_map lacks {sorted(missing)}")
    for auto_name in sorted(set(auto_map) - {"AutoConfig"}):
        model = getattr(transformers, auto_name).from_pretrained(folder, trust_remote_code=True)
        for name, tensor in model.state_dict().items():
            # A bare AutoModel's "layers.0..." is stored as "model.layers.0..." by a head; new heads are not stored.
            stored = weights.get(name, weights.get(f"{model.base_model_prefix}.{name}"))
            if stored is not None and not torch.equal(stored, tensor):
                fail(f"{auto_name}: weight {name} differs from the stored one")
        print(f"ok  {auto_name} -> {type(model).__name__} (remote code {type(model).__module__})")


def check_logits(folder: Path, expected: dict):
    model = getattr(transformers, expected["auto_class"]).from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(**expected["inputs"]).logits
    if not torch.equal(logits, expected["logits"]):
        difference = (logits - expected["logits"]).abs().max().item()
        fail(f"logits differ from the publishing process's by up to {difference:.3g}")
    print(f"ok  {expected['auto_class']} logits equal the publishing process's, shape {tuple(logits.shape)}")


def check_pipeline(folder: Path, expected: dict):
    # trust_remote_code: without the package, AutoTokenizer reads config.json, whose model type only the folder's
    # code defines.
    pipeline_tag = expected["pipeline_tag"]
    if pipeline_tag == "text2text-generation":
        # transformers 5 has no text2text-generation pipeline of its own: the folder's config.custom_pipelines and
        # pipelines_minitransformer.py provide it, so it loads by task name from the folder.
        pipe = transformers.pipeline(pipeline_tag, model=str(folder), trust_remote_code=True)
        if not type(pipe).__module__.startswith("transformers_modules."):
            fail(f"the {pipeline_tag} pipeline did not come from the folder's code: {type(pipe).__module__}")
        text = pipe("def add(a, b):\n    return a + b", max_new_tokens=12)[0]["generated_text"]
        print(f"ok  pipeline({pipeline_tag!r}) from the folder's pipelines_minitransformer.py: {text!r}")
        return
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    model = getattr(transformers, expected["auto_class"]).from_pretrained(folder, trust_remote_code=True)
    pipe = transformers.pipeline(pipeline_tag, model=model, tokenizer=tokenizer)
    if pipeline_tag == "text-generation":
        text = pipe("def ", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    else:
        text = pipe(f"def {tokenizer.mask_token}")[0]["sequence"]
    print(f"ok  pipeline({pipeline_tag!r}): {text!r}")


def check_card(folder: Path):
    card = ModelCard.load(folder / "README.md")
    metadata = card.data.to_dict()
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        fail(f"README.md metadata lacks {missing}")
    print(f"ok  model card metadata: pipeline_tag={metadata['pipeline_tag']!r}, license={metadata['license']!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("staged_dir", type=Path, help="The staged repository folder (scripts/publish.py writes it).")
    parser.add_argument("expected", type=Path, help="A torch file with the model `inputs`, the expected `logits` and "
                                                    "the task's row of the task table (scripts/publish.py writes it).")
    args = parser.parse_args(argv)
    if not (args.staged_dir / "config.json").is_file():
        parser.error(f"{str(args.staged_dir)!r} is not a staged model folder (no config.json)")
    if not args.expected.is_file():
        parser.error(f"{str(args.expected)!r} does not exist")
    return args


def main():
    args = parse_args()
    folder, expected = args.staged_dir, torch.load(args.expected)
    try:
        import hf_minitransformer  # noqa: F401
    except ImportError:
        pass
    else:
        fail("hf_minitransformer is importable: the check would not exercise the remote code")
    check_auto_classes(folder, saved_weights(folder), expected)
    check_logits(folder, expected)
    check_pipeline(folder, expected)
    check_card(folder)


if __name__ == "__main__":
    main()
