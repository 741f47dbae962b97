"""hf_minitransformer.packed_weights: the float32 output projection in oneDNN's packed layout (CPU decoding)."""

import pytest
import torch

from hf_minitransformer import MiniTransformerForSeq2SeqLM
from hf_minitransformer.packed_weights import PackedLinear, pack_output_projection

from .conftest import make_config


def seq2seq_pair() -> tuple[MiniTransformerForSeq2SeqLM, MiniTransformerForSeq2SeqLM]:
    model = MiniTransformerForSeq2SeqLM(make_config()).eval()
    copy = MiniTransformerForSeq2SeqLM(make_config()).eval()
    copy.load_state_dict(model.state_dict())
    return model, pack_output_projection(copy)


def test_packed_projection_gives_the_same_logits():
    model, packed = seq2seq_pair()
    assert isinstance(packed.lm_head, PackedLinear)
    source, decoder_input_ids = torch.randint(3, 99, (2, 7)), torch.randint(3, 99, (2, 5))
    with torch.no_grad():
        expected = model(input_ids=source, decoder_input_ids=decoder_input_ids).logits
        logits = packed(input_ids=source, decoder_input_ids=decoder_input_ids).logits
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_compiled_static_generate_gives_the_same_tokens_at_two_batch_sizes():
    # The compiled step runs with inductor's freezing (as for int8): batch 1, 8, then 1 again in one process.
    model, packed = seq2seq_pair()
    kwargs = dict(max_new_tokens=6, do_sample=False, eos_token_id=None, cache_implementation="static")
    for batch_size, seed in ((1, 0), (8, 1), (1, 2)):
        source = torch.randint(3, 99, (batch_size, 7), generator=torch.Generator().manual_seed(seed))
        assert torch.equal(packed.generate(source, **kwargs), model.generate(source, **kwargs)), batch_size


def test_bad_models_and_saving_are_refused(tmp_path):
    with pytest.raises(ValueError, match="training mode"):
        pack_output_projection(MiniTransformerForSeq2SeqLM(make_config()))
    _, packed = seq2seq_pair()
    with pytest.raises(ValueError, match="float32 nn.Linear lm_head"):
        pack_output_projection(packed)
    with pytest.raises(ValueError, match="Save the float32 model"):
        packed.save_pretrained(tmp_path / "packed")
    assert not (tmp_path / "packed").exists()
