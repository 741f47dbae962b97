"""Named model sizes for `scripts/train.py --model_config` and `scripts/benchmark.py`."""

from .configuration_minitransformer import MiniTransformerConfig


PRESETS = {
    # For tests and smoke runs: seconds on a laptop CPU.
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                 max_position_embeddings=256),
    # The default of the main job: trains on CPU in minutes.
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                  max_position_embeddings=512),
    # The paper's base model (Vaswani et al. Table 3): d_model 512, 8 heads, d_ff 2048, 6 layers (and, for seq2seq, 6
    # decoder layers): MiniTransformerConfig's own defaults.
    "paper": dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=2048,
                  max_position_embeddings=512),
    # About GPT-2 small (124M with a 50k vocabulary): 12 layers, hidden 768, 12 heads, 1024 positions.
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 max_position_embeddings=1024),
}


def config_from_preset(name: str, **overrides) -> MiniTransformerConfig:
    """Build a config from a preset name; `overrides` (vocab_size, is_decoder, ...) win over the preset."""
    if name not in PRESETS:
        raise ValueError(f"Unknown model preset {name!r}; choose one of {', '.join(map(repr, PRESETS))}.")
    return MiniTransformerConfig(**{**PRESETS[name], **overrides})
