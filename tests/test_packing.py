"""Packed (padding-free) batches: several documents in one row, `position_ids` restarting at 0 for each, as
transformers' DataCollatorWithFlattening builds them. Each document is computed as if it were alone."""

import pytest
import torch
from datasets import Dataset
from transformers import DataCollatorWithFlattening, Trainer, TrainingArguments

from hf_minitransformer import MiniTransformerForCausalLM, MiniTransformerForMaskedLM

from .conftest import make_config


LENGTHS = (10, 12, 9)  # 31 tokens in the row, more than max_position_embeddings=16; no document is


def packed_row() -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    documents = [torch.randint(3, 99, (length,)) for length in LENGTHS]
    input_ids = torch.cat(documents)[None]  # (1, 31)
    position_ids = torch.cat([torch.arange(length) for length in LENGTHS])[None]  # 0..9, 0..11, 0..8
    return documents, input_ids, position_ids


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("position_embedding_type", ["sinusoidal", "learned", "rotary"])
@pytest.mark.parametrize("head", [MiniTransformerForCausalLM, MiniTransformerForMaskedLM])
def test_a_packed_row_computes_each_document_as_if_alone(head, position_embedding_type, implementation):
    config = make_config(max_position_embeddings=16, position_embedding_type=position_embedding_type)
    config._attn_implementation = implementation
    model = head(config).eval()
    documents, input_ids, position_ids = packed_row()
    with torch.no_grad():
        packed = model(input_ids, position_ids=position_ids).logits[0]
        alone = torch.cat([model(document[None]).logits[0] for document in documents])
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)


def test_a_masked_lm_document_does_not_see_its_neighbours():
    # Bidirectional attention could look both ways across a boundary: changing the next document changes nothing.
    model = MiniTransformerForMaskedLM(make_config(max_position_embeddings=16)).eval()
    documents, input_ids, position_ids = packed_row()
    changed = input_ids.clone()
    changed[0, LENGTHS[0]:] = (changed[0, LENGTHS[0]:] - 3 + 1) % 96 + 3
    with torch.no_grad():
        first = model(input_ids, position_ids=position_ids).logits[0, : LENGTHS[0]]
        after_change = model(changed, position_ids=position_ids).logits[0, : LENGTHS[0]]
    assert torch.equal(first, after_change)


def test_trainer_with_data_collator_with_flattening_trains_the_causal_lm(tmp_path):
    torch.manual_seed(0)
    # A learnable language: each document counts up by one from a random start.
    starts = torch.randint(3, 60, (64,)).tolist()
    lengths = torch.randint(5, 14, (64,)).tolist()
    data = Dataset.from_dict({"input_ids": [list(range(s, s + n)) for s, n in zip(starts, lengths)]})
    model = MiniTransformerForCausalLM(make_config(max_position_embeddings=16))
    collator = DataCollatorWithFlattening()
    batch = collator([data[i] for i in range(8)])
    assert batch["input_ids"].shape[0] == 1 and batch["input_ids"].shape[1] > 16  # one row longer than any position

    def loss(model) -> float:
        model.eval()
        with torch.no_grad():
            return model(**batch).loss.item()

    before = loss(model)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=10,
                             learning_rate=1e-2, report_to=[], save_strategy="no", logging_strategy="no",
                             use_cpu=True, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=data, data_collator=collator).train()
    assert loss(model) < before / 3, (before, loss(model))
