import json

import pytest
from transformers import AutoConfig

from hf_minitransformer import MiniTransformerConfig
from hf_minitransformer.presets import PRESETS, config_from_preset


def test_defaults_are_the_papers_base_model():
    config = MiniTransformerConfig()
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (512, 6, 8)
    assert config.intermediate_size == 2048
    assert config.head_dim == 64
    assert config.hidden_act == "relu"
    assert config.position_embedding_type == "sinusoidal"
    assert config.layer_norm_position == "post"
    assert config.scale_embeddings and config.tie_word_embeddings
    assert not config.is_decoder
    assert config.hidden_dropout_prob == 0.1


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(hidden_size=30, num_attention_heads=4), "hidden_size` (30) must be divisible"),
        (dict(hidden_act="tanh"), "`hidden_act` must be one of 'relu', 'gelu', 'gelu_new', 'silu', got 'tanh'"),
        (dict(position_embedding_type="alibi"), "`position_embedding_type` must be one of"),
        (dict(layer_norm_position="sandwich"), "`layer_norm_position` must be one of 'post', 'pre'"),
        (dict(classifier_pooling="max"), "`classifier_pooling` must be one of"),
        (dict(hidden_dropout_prob=-0.1), "`hidden_dropout_prob` must be a probability between 0 and 1, got -0.1"),
        (dict(attention_dropout=1.5), "`attention_dropout` must be a probability between 0 and 1, got 1.5"),
        (dict(num_hidden_layers=0), "`num_hidden_layers` must be a positive integer, got 0"),
        (dict(vocab_size=-5), "`vocab_size` must be a positive integer, got -5"),
        (dict(max_position_embeddings=0), "`max_position_embeddings` must be a positive integer"),
        (dict(layer_norm_eps=0.0), "`layer_norm_eps` must be positive"),
        (dict(hidden_size=36, num_attention_heads=12, position_embedding_type="rotary"), "even head size"),
    ],
)
def test_bad_values_raise_value_error_naming_field_and_value(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MiniTransformerConfig(**overrides)


def test_bad_values_in_config_json_raise_on_load(tmp_path, tiny_config):
    tiny_config.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    data = json.loads(path.read_text())
    data["num_attention_heads"] = 5
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="must be divisible"):
        AutoConfig.from_pretrained(tmp_path)


def test_round_trip_through_auto_config(tmp_path):
    config = MiniTransformerConfig(hidden_size=64, num_attention_heads=2, layer_norm_position="pre",
                                   position_embedding_type="rotary", hidden_act="gelu", is_decoder=True)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is MiniTransformerConfig
    assert loaded.to_diff_dict() == config.to_diff_dict()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "minitransformer"


def test_presets_and_unknown_preset():
    base = config_from_preset("base", vocab_size=50257)
    assert (base.num_hidden_layers, base.hidden_size, base.num_attention_heads) == (12, 768, 12)
    assert base.max_position_embeddings == 1024 and base.vocab_size == 50257
    assert set(PRESETS) >= {"tiny", "small", "base"}
    with pytest.raises(ValueError, match="Unknown model preset 'huge'; choose one of 'tiny', 'small', 'base'"):
        config_from_preset("huge")
