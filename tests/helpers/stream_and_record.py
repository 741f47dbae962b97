"""Run scripts/train.py in this process, recording the source of every training pair this rank collates; then write
them to `<output_dir>/seen<R>.json` and this rank's final weights to `<output_dir>/rank<R>.safetensors`.

Launched by tests/test_streaming.py through `accelerate launch` (2 CPU processes, a seq2seq --streaming run without
DataLoader workers, so that the collator runs in the rank's own process): the test checks which pairs each rank
trained on, and that the ranks end with the same weights.
"""

import json
import os
import sys
from pathlib import Path

from safetensors.torch import save_file


# A launched script: the tests' package is importable only from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from hf_minitransformer.training.tasks import Seq2SeqTask  # noqa: E402
from tests.conftest import load_script  # noqa: E402


def record_training_batches(seen: list[list[str]]):
    """Seq2SeqTask's training collator, wrapped to append each batch's decoded sources to `seen`."""
    collators = Seq2SeqTask.collators

    def recording_collators(self, optimization, tokenizer, model):
        train_collator, eval_collator = collators(self, optimization, tokenizer, model)

        def record(features: list[dict]) -> dict:
            seen.append([tokenizer.decode(feature["input_ids"]) for feature in features])
            return train_collator(features)

        return record, eval_collator

    Seq2SeqTask.collators = recording_collators


def main():
    seen = []
    record_training_batches(seen)
    argv = sys.argv[1:]
    model = load_script("train").main(argv)
    output_dir = Path(argv[argv.index("--output_dir") + 1])
    rank = int(os.environ.get("RANK", "0"))
    (output_dir / f"seen{rank}.json").write_text(json.dumps(seen))
    # clone: safetensors refuses tensors that share storage (the tied embeddings).
    weights = {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}
    save_file(weights, str(output_dir / f"rank{rank}.safetensors"))


if __name__ == "__main__":
    main()
