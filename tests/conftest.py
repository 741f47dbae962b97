import os

import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from hf_minitransformer import MiniTransformerConfig  # noqa: E402  (the import registers the Auto classes)


TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_config() -> MiniTransformerConfig:
    """hidden 32, 2 layers, 4 heads, vocab 99, dropout off: every test runs in well under a second."""
    return MiniTransformerConfig(**TINY)


def make_config(**overrides) -> MiniTransformerConfig:
    return MiniTransformerConfig(**{**TINY, **overrides})


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
