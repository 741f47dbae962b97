import dataclasses
import json
import re

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


# Every field this package declares, with its default. A changed default, or a new field added without its default
# written here, fails: the defaults are the paper's model, and checkpoints saved without a field rely on them.
PINNED_DEFAULTS = dict(
    vocab_size=32000,
    hidden_size=512,  # d_model
    num_hidden_layers=6,  # N
    decoder_layers=6,  # None -> num_hidden_layers
    num_attention_heads=8,  # h
    intermediate_size=2048,  # d_ff
    max_position_embeddings=512,
    hidden_act="relu",
    position_embedding_type="sinusoidal",
    layer_norm_position="post",
    is_decoder=False,
    is_encoder_decoder=False,
    scale_embeddings=True,
    attention_bias=False,  # Q = X W_Q: no bias in the four attention projections
    type_vocab_size=0,  # BERT's fields, for converted checkpoints: off, nothing built
    embedding_layer_norm=False,
    masked_lm_transform=False,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    hidden_dropout_prob=0.1,  # P_drop, paper §5.4
    attention_dropout=0.0,
    layer_norm_eps=1e-5,
    initializer_range=0.02,
    classifier_pooling="mean",
    classifier_dropout=None,
    use_cache=True,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    decoder_start_token_id=1,  # None -> bos_token_id
    tie_word_embeddings=True,
    logits_with_loss="all",
)


def test_every_default_is_pinned():
    config = MiniTransformerConfig()
    declared = {field.name for field in dataclasses.fields(MiniTransformerConfig)
                if field.name in MiniTransformerConfig.__annotations__}
    assert declared == PINNED_DEFAULTS.keys()
    assert {name: getattr(config, name) for name in declared} == PINNED_DEFAULTS


def test_ints_are_accepted_for_float_fields_as_in_transformers_configs():
    config = MiniTransformerConfig(hidden_dropout_prob=0, attention_dropout=1, classifier_dropout=0)
    assert (config.hidden_dropout_prob, config.attention_dropout, config.classifier_dropout) == (0, 1, 0)
    floats = [field.name for field in dataclasses.fields(MiniTransformerConfig)
              if field.name in MiniTransformerConfig.__annotations__ and "float" in str(field.type)]
    assert floats == ["hidden_dropout_prob", "attention_dropout", "layer_norm_eps", "initializer_range",
                      "classifier_dropout"]
    config = MiniTransformerConfig(**dict.fromkeys(floats, 1))  # every float field takes an int
    assert [getattr(config, name) for name in floats] == [1] * 5
    assert MiniTransformerConfig(initializer_range=0).initializer_range == 0
    with pytest.raises(ValueError, match="`hidden_dropout_prob` must be a probability between 0 and 1, got 2"):
        MiniTransformerConfig(hidden_dropout_prob=2)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(hidden_size="512"), "`hidden_size`: Field 'hidden_size' expected int, got str (value: '512')"),
        (dict(layer_norm_eps="x"), "`layer_norm_eps`: Field 'layer_norm_eps' with value 'x' doesn't match any type"),
        (dict(scale_embeddings="yes"), "`scale_embeddings`: Field 'scale_embeddings' expected bool"),
    ],
)
def test_a_field_of_the_wrong_type_is_a_value_error(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        MiniTransformerConfig(**overrides)
    config = MiniTransformerConfig()
    name, value = next(iter(overrides.items()))
    with pytest.raises(ValueError, match=f"`{name}`"):  # also when set afterwards
        setattr(config, name, value)


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
        (dict(num_hidden_layers=0), "`num_hidden_layers` must be a positive integer no larger than 16,777,216, got 0"),
        (dict(vocab_size=-5), "`vocab_size` must be a positive integer no larger than 16,777,216, got -5"),
        (dict(max_position_embeddings=10**12), "`max_position_embeddings` must be a positive integer no larger than "
                                               "16,777,216, got 1000000000000"),
        (dict(vocab_size=100, pad_token_id=100), "`pad_token_id` must be a token id in [0, vocab_size=100) or None, "
                                                 "got 100"),
        (dict(pad_token_id=-1), "`pad_token_id` must be a token id in [0, vocab_size=32000) or None, got -1"),
        (dict(position_embedding_type="rotary", rope_parameters={"rope_type": "ntk-by-parts"}),
         "`rope_parameters['rope_type']` must be one of 'default', 'linear', 'dynamic', 'yarn', 'longrope', "
         "'llama3', got 'ntk-by-parts'"),
        (dict(position_embedding_type="rotary", rope_parameters={"rope_type": "linear"}),
         "Missing required keys in `rope_parameters` for 'rope_type'='linear': {'factor'}"),
        (dict(max_position_embeddings=0), "`max_position_embeddings` must be a positive integer"),
        (dict(layer_norm_eps=0.0), "`layer_norm_eps` must be positive"),
        (dict(hidden_size=36, num_attention_heads=12, position_embedding_type="rotary"), "even head size"),
        # Infinity and NaN parse as numbers from JSON (config.json, --config_overrides) and from Python.
        (dict(layer_norm_eps=float("inf")), "`layer_norm_eps` must be a finite number, got inf"),
        (dict(initializer_range=float("nan")), "`initializer_range` must be a finite number, got nan"),
        (dict(position_embedding_type="rotary", rope_parameters={"rope_type": "default", "rope_theta": float("inf")}),
         "`rope_parameters['rope_theta']` must be a finite number, got inf"),
        (dict(vocab_size=100, bos_token_id=100), "`bos_token_id` must be a token id in [0, vocab_size=100) or None, "
                                                 "got 100"),
        (dict(eos_token_id=-1), "`eos_token_id` must be a token id in [0, vocab_size=32000) or None, got -1"),
        (dict(eos_token_id=[2, 40000]), "`eos_token_id` must be a token id in [0, vocab_size=32000) or None, got "
                                        "[2, 40000]"),
        (dict(vocab_size=100, decoder_start_token_id=120),
         "`decoder_start_token_id` must be a token id in [0, vocab_size=100) or None, got 120"),
        (dict(logits_with_loss="some"), "`logits_with_loss` must be one of 'all', 'labelled', 'none', got 'some'"),
    ],
)
def test_bad_values_raise_value_error_naming_field_and_value(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
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
    assert set(PRESETS) >= {"tiny", "small", "paper", "base"}
    # The paper's base model (Table 3) is the config's own default, preset or not.
    paper, default = config_from_preset("paper"), MiniTransformerConfig()
    assert paper.to_dict() == default.to_dict()
    with pytest.raises(ValueError, match="Unknown model preset 'huge'; choose one of 'tiny', 'small', 'paper', "
                                         "'base'"):
        config_from_preset("huge")


def test_logits_with_loss_is_a_choice_of_the_run_never_saved(tmp_path):
    # A training run may ask for no logits; the checkpoint it saves must still return them to whoever loads it.
    config = MiniTransformerConfig(logits_with_loss="none")
    assert config.logits_with_loss == "none"
    config.save_pretrained(tmp_path)
    assert "logits_with_loss" not in json.loads((tmp_path / "config.json").read_text())
    assert AutoConfig.from_pretrained(tmp_path).logits_with_loss == "all"
