"""save_pretrained / from_pretrained: files written, bit-identical round trips through every Auto class, loading
options (dtype, device_map, attention backend), config checks on load, and remote code without the package."""

import filecmp
import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

import hf_minitransformer
from hf_minitransformer.modeling_minitransformer import (
    AUTO_CLASS_NAMES,
    SEQ2SEQ_AUTO_CLASS_NAMES,
    sinusoidal_position_encoding,
)

from .conftest import make_config, run_python


PACKAGE_DIR = Path(hf_minitransformer.__file__).parent
CODE_FILES = (
    "configuration_minitransformer.py",
    "modeling_minitransformer.py",
    "loss_minitransformer.py",
    "pipelines_minitransformer.py",
)


def example_inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, 99, (2, 7), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0  # right padding on the second row
    return dict(input_ids=input_ids, attention_mask=attention_mask)


def model_output(model, inputs) -> torch.Tensor:
    """What each head is for: hidden states of the bare model, logits of the others (seq2seq: for 4 target tokens)."""
    if model.config.is_encoder_decoder:
        inputs = {**inputs, "decoder_input_ids": inputs["input_ids"][:, :4]}
    with torch.no_grad():
        out = model(**inputs)
    return out.last_hidden_state if isinstance(model, hf_minitransformer.MiniTransformerModel) else out.logits


def family(auto_name: str) -> set[str]:
    """The Auto classes a checkpoint of `auto_name`'s head serves."""
    if auto_name == "AutoModelForSeq2SeqLM":
        return set(SEQ2SEQ_AUTO_CLASS_NAMES)
    return set(AUTO_CLASS_NAMES) - {"AutoModelForSeq2SeqLM"}


def tied_keys(model) -> dict[str, str]:
    """{tied parameter: the parameter it shares}, its submodels' ties included (the encoder-decoder's embeddings)."""
    return model.all_tied_weights_keys


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, tuple[Path, torch.nn.Module, torch.Tensor]]:
    """Every head, freshly initialised and saved to its own folder: {auto class: (folder, model, output)}."""
    inputs = example_inputs()
    heads = {}
    for auto_name, class_name in AUTO_CLASS_NAMES.items():
        torch.manual_seed(0)
        model = getattr(hf_minitransformer, class_name)(make_config(num_labels=3)).eval()
        folder = tmp_path_factory.mktemp(class_name)
        model.save_pretrained(folder)
        heads[auto_name] = (folder, model, model_output(model, inputs))
    return heads


def assert_matches_checkpoint(state_dict: dict[str, torch.Tensor], folder: Path, tied: dict[str, str],
                              prefix: str = ""):
    """Every saved tensor under `prefix` is loaded bit for bit; a state-dict key absent from the file must be tied."""
    checkpoint = load_file(folder / "model.safetensors")
    checkpoint = {key.removeprefix(prefix): value for key, value in checkpoint.items() if key.startswith(prefix)}
    assert checkpoint.keys() <= state_dict.keys()
    for key, value in checkpoint.items():
        assert torch.equal(state_dict[key], value), key
    for key in state_dict.keys() - checkpoint.keys():
        assert key in tied, f"{key} is neither saved nor tied"
        assert torch.equal(state_dict[key], state_dict[tied[key]])


@pytest.mark.parametrize("auto_name", AUTO_CLASS_NAMES)
def test_save_pretrained_writes_weights_config_and_code(saved, auto_name):
    folder, model, _ = saved[auto_name]
    assert {"model.safetensors", "config.json", *CODE_FILES} <= {p.name for p in folder.iterdir()}
    for name in CODE_FILES:
        assert filecmp.cmp(folder / name, PACKAGE_DIR / name, shallow=False), f"{name} differs from the package"

    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "minitransformer"
    assert config["architectures"] == [type(model).__name__]
    # Whichever head wrote the folder, auto_map names the config and all the heads of its family (one stack: five;
    # encoder-decoder: its own), each defined in a copied file.
    assert config["auto_map"].keys() == {"AutoConfig", *family(auto_name)}
    for reference in config["auto_map"].values():
        module, class_name = reference.split(".")
        assert f"class {class_name}(" in (folder / f"{module}.py").read_text()


@pytest.mark.parametrize("auto_name", AUTO_CLASS_NAMES)
def test_round_trip_through_auto_class_is_bit_identical(saved, auto_name):
    folder, model, expected = saved[auto_name]
    # No trust_remote_code: the registration done by `import hf_minitransformer` serves the folder.
    loaded, info = getattr(transformers, auto_name).from_pretrained(folder, output_loading_info=True)
    assert type(loaded) is type(model)
    assert type(loaded).__module__ == "hf_minitransformer.modeling_minitransformer"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert not loaded.training

    loaded_state = loaded.state_dict()
    assert loaded_state.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded_state[key], value), key
    assert_matches_checkpoint(loaded_state, folder, tied_keys(model))
    assert torch.equal(model_output(loaded, example_inputs()), expected)


@pytest.mark.parametrize("head_name", [name for name in AUTO_CLASS_NAMES.values() if name != "MiniTransformerModel"])
def test_every_head_loads_a_bare_checkpoint_and_reports_its_own_weights_missing(head_name, tmp_path):
    # What transformers reports for any head: the weights outside `base_model_prefix` that the checkpoint lacks are
    # missing (and freshly initialised); the body's are all loaded.
    head_class = getattr(hf_minitransformer, head_name)
    bare_class = hf_minitransformer.MiniTransformerModel
    if head_name == "MiniTransformerForSeq2SeqLM":
        bare_class = hf_minitransformer.MiniTransformerSeq2SeqModel
    bare = bare_class(make_config(num_labels=3))
    bare.save_pretrained(tmp_path)
    head, info = head_class.from_pretrained(tmp_path, output_loading_info=True)
    prefix = f"{head.base_model_prefix}."
    own = {name for name in head.state_dict() if not name.startswith(prefix)} - head.all_tied_weights_keys.keys()
    assert own and set(info["missing_keys"]) == own
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    for name, value in bare.state_dict().items():
        assert torch.equal(head.model.state_dict()[name], value), name


def test_auto_model_loads_the_body_of_any_head(saved):
    folder, model, _ = saved["AutoModelForMaskedLM"]
    body, info = transformers.AutoModel.from_pretrained(folder, output_loading_info=True)
    assert type(body) is hf_minitransformer.MiniTransformerModel
    assert not info["missing_keys"] and set(info["unexpected_keys"]) == {"lm_head.bias"}  # the head is dropped
    for key, value in model.model.state_dict().items():
        assert torch.equal(body.state_dict()[key], value), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sinusoidal_table_is_rebuilt_after_from_pretrained(saved, dtype):
    # The table is a non-persistent buffer, absent from the checkpoint; `_init_weights` must recompute it.
    folder, _, _ = saved["AutoModelForCausalLM"]
    assert not any("position_encoding" in key for key in load_file(folder / "model.safetensors"))
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    table = loaded.model.embeddings.position_encoding
    assert table.dtype == dtype
    expected = sinusoidal_position_encoding(64, 32).to(dtype)
    torch.testing.assert_close(table, expected, rtol=0, atol=0 if dtype == torch.float32 else 4e-3)


def test_bfloat16_loading(saved):
    folder, model, expected = saved["AutoModelForCausalLM"]
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16
    for name, param in loaded.named_parameters():
        assert param.dtype == torch.bfloat16, name
        assert torch.equal(param, model.get_parameter(name).to(torch.bfloat16)), name
    logits = model_output(loaded, example_inputs())
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits.float(), expected, rtol=0.05, atol=0.05)


def test_device_map_auto_loads_on_cpu(saved):
    folder, _, expected = saved["AutoModelForMaskedLM"]
    loaded = transformers.AutoModelForMaskedLM.from_pretrained(folder, device_map="auto")
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    assert torch.equal(loaded.model.embeddings.position_encoding, sinusoidal_position_encoding(64, 32))
    assert torch.equal(model_output(loaded, example_inputs()), expected)


def test_device_map_auto_offloads_whole_layers(saved, tmp_path):
    # A CPU budget smaller than the model makes accelerate place modules and offload the rest to disk; layers
    # (`_no_split_modules`) stay whole, and the dispatched model computes the same logits.
    folder, _, expected = saved["AutoModelForMaskedLM"]
    loaded = transformers.AutoModelForMaskedLM.from_pretrained(
        folder, device_map="auto", max_memory={"cpu": 50_000}, offload_folder=tmp_path / "offload"
    )
    devices = loaded.hf_device_map
    assert "disk" in devices.values() and "cpu" in devices.values(), devices
    assert not any(name.startswith("model.layers.") and name.count(".") > 2 for name in devices), devices
    assert torch.equal(model_output(loaded, example_inputs()), expected)


def attention_weights(model, inputs) -> tuple:
    # Only eager materialises attention weights (SDPA returns none), so this tells which backend actually ran.
    with torch.no_grad():
        return model(**inputs, output_attentions=True).attentions


def test_attn_implementation_at_load_and_switched_after(saved):
    folder, _, expected = saved["AutoModelForCausalLM"]
    inputs = example_inputs()
    outputs = {}
    for implementation in ("eager", "sdpa"):
        loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation=implementation)
        assert loaded.config._attn_implementation == implementation
        assert all(layer.self_attn.config._attn_implementation == implementation for layer in loaded.model.layers)
        outputs[implementation] = model_output(loaded, inputs)
        assert len(attention_weights(loaded, inputs)) == (2 if implementation == "eager" else 0)

    loaded.set_attn_implementation("eager")
    assert loaded.config._attn_implementation == "eager"
    attentions = attention_weights(loaded, inputs)
    assert len(attentions) == 2 and attentions[0].shape == (2, 4, 7, 7)
    assert torch.equal(model_output(loaded, inputs), outputs["eager"])
    loaded.set_attn_implementation("sdpa")
    assert loaded.config._attn_implementation == "sdpa"
    assert len(attention_weights(loaded, inputs)) == 0
    assert torch.equal(model_output(loaded, inputs), outputs["sdpa"])
    # Padded key positions differ in how they are masked, so compare the rows' real tokens only.
    real = inputs["attention_mask"].bool()
    for implementation in ("eager", "sdpa"):
        torch.testing.assert_close(outputs[implementation][real], expected[real], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("hidden_act", "tanh", "hidden_act"),
        ("hidden_size", 30, "divisible"),
        ("position_embedding_type", "alibi", "position_embedding_type"),
        ("hidden_dropout_prob", 1.5, "hidden_dropout_prob"),
        ("num_hidden_layers", 0, "num_hidden_layers"),
    ],
)
def test_bad_config_json_raises_value_error_on_load(saved, tmp_path, field, value, message):
    folder = tmp_path / "bad"
    shutil.copytree(saved["AutoModel"][0], folder)
    config = json.loads((folder / "config.json").read_text())
    config[field] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        transformers.AutoModel.from_pretrained(folder)
    with pytest.raises(ValueError, match=message):
        transformers.AutoConfig.from_pretrained(folder)


def test_subprocess_block_hides_the_package(tmp_path):
    # Control: the same interpreter, environment and directory import the package when it is not blocked ...
    find = "import importlib.util; print(importlib.util.find_spec('hf_minitransformer').origin)"
    visible = run_python(find, tmp_path, block_package=False)
    assert visible.stdout.strip() == str(PACKAGE_DIR / "__init__.py")
    # ... and fail to when it is, so the remote-code tests below really run without it.
    hidden = run_python("import hf_minitransformer", tmp_path, check=False)
    assert hidden.returncode != 0
    assert "ModuleNotFoundError" in hidden.stderr and "hf_minitransformer" in hidden.stderr


REMOTE_CODE_ROUND_TRIP = """
import json
import torch
import transformers

folders, work = json.loads(sys.argv[1]), sys.argv[2]
inputs = torch.load(f"{work}/inputs.pt")
results = {}
# Each head from its own folder, plus the bare models from the masked-LM and the seq2seq folders (a body under a
# head's prefix).
for key, (auto_name, folder) in {**{k: (k, f) for k, f in folders.items()},
                                 "AutoModel<-MaskedLM": ("AutoModel", folders["AutoModelForMaskedLM"]),
                                 "AutoModel<-Seq2SeqLM": ("AutoModel", folders["AutoModelForSeq2SeqLM"])}.items():
    model, info = getattr(transformers, auto_name).from_pretrained(folder, trust_remote_code=True,
                                                                   output_loading_info=True)
    model_inputs = dict(inputs)
    if model.config.is_encoder_decoder:
        model_inputs["decoder_input_ids"] = inputs["input_ids"][:, :4]
    with torch.no_grad():
        out = model(**model_inputs)
    results[key] = dict(
        module=type(model).__module__,
        class_name=type(model).__name__,
        config_module=type(model.config).__module__,
        missing=sorted(info["missing_keys"]) + sorted(info["mismatched_keys"]),
        unexpected=sorted(info["unexpected_keys"]),
        state_dict=model.state_dict(),
        output=out.last_hidden_state if auto_name == "AutoModel" else out.logits,
    )
    if key == "AutoModelForCausalLM":
        # Fine-tune-and-share workflow: a model that came from remote code saves a folder that is remote code again.
        model.save_pretrained(f"{work}/resaved")
results["loaded_packages"] = sorted(name for name, mod in sys.modules.items()
                                    if name.startswith("hf_minitransformer") and mod is not None)
torch.save(results, f"{work}/results.pt")
"""


def test_remote_code_round_trip_without_the_package(saved, tmp_path):
    inputs = example_inputs()
    torch.save(inputs, tmp_path / "inputs.pt")
    folders = {auto_name: str(folder) for auto_name, (folder, _, _) in saved.items()}
    run_python(REMOTE_CODE_ROUND_TRIP, tmp_path, json.dumps(folders), str(tmp_path))
    results = torch.load(tmp_path / "results.pt")
    assert results.pop("loaded_packages") == []

    body_of_mlm = results.pop("AutoModel<-MaskedLM")
    assert body_of_mlm["module"].startswith("transformers_modules.")
    assert body_of_mlm["missing"] == [] and body_of_mlm["unexpected"] == ["lm_head.bias"]  # the head is dropped
    assert_matches_checkpoint(body_of_mlm["state_dict"], saved["AutoModelForMaskedLM"][0], {}, prefix="model.")
    # A seq2seq folder's auto_map serves AutoModel with the bare encoder-decoder, loading every weight but the head's.
    seq2seq_folder, seq2seq_model, _ = saved["AutoModelForSeq2SeqLM"]
    body_of_seq2seq = results.pop("AutoModel<-Seq2SeqLM")
    assert body_of_seq2seq["module"].startswith("transformers_modules.")
    assert body_of_seq2seq["class_name"] == "MiniTransformerSeq2SeqModel"
    assert body_of_seq2seq["missing"] == body_of_seq2seq["unexpected"] == []
    assert_matches_checkpoint(body_of_seq2seq["state_dict"], seq2seq_folder, tied_keys(seq2seq_model.model),
                              prefix="model.")
    with torch.no_grad():
        expected_hidden = seq2seq_model.model(**inputs, decoder_input_ids=inputs["input_ids"][:, :4])
    torch.testing.assert_close(body_of_seq2seq["output"], expected_hidden.last_hidden_state, rtol=1e-6, atol=1e-6)

    assert results.keys() == AUTO_CLASS_NAMES.keys()
    for auto_name, loaded in results.items():
        folder, model, expected = saved[auto_name]
        # The classes came from the folder's copied files, not from an installed package.
        assert loaded["module"].startswith("transformers_modules."), loaded["module"]
        assert loaded["module"].endswith(".modeling_minitransformer")
        assert loaded["config_module"].startswith("transformers_modules."), loaded["config_module"]
        assert loaded["missing"] == loaded["unexpected"] == [], auto_name
        assert_matches_checkpoint(loaded["state_dict"], folder, tied_keys(model))
        assert loaded["state_dict"].keys() == model.state_dict().keys()
        # Same weights, same CPU kernels: only a different thread split could move the last bits.
        torch.testing.assert_close(loaded["output"], expected, rtol=1e-6, atol=1e-6)

    resaved, original = tmp_path / "resaved", saved["AutoModelForCausalLM"][0]
    resaved_auto_map = json.loads((resaved / "config.json").read_text())["auto_map"]
    assert resaved_auto_map.keys() == {"AutoConfig", *family("AutoModelForCausalLM")}
    for name in CODE_FILES:
        assert filecmp.cmp(resaved / name, PACKAGE_DIR / name, shallow=False), name
    assert_matches_checkpoint(results["AutoModelForCausalLM"]["state_dict"], resaved,
                              tied_keys(saved["AutoModelForCausalLM"][1]))
    assert load_file(resaved / "model.safetensors").keys() == load_file(original / "model.safetensors").keys()


def test_a_model_trained_without_logits_returns_them_once_saved(tmp_path):
    # logits_with_loss="none" is a training speed-up; whoever loads the checkpoint (Trainer.evaluate with
    # compute_metrics, a metric script) gets logits with the loss.
    model = hf_minitransformer.MiniTransformerForCausalLM(make_config(logits_with_loss="none")).eval()
    input_ids = example_inputs()["input_ids"]
    assert model(input_ids, labels=input_ids).logits is None
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    out = loaded(input_ids, labels=input_ids)
    assert out.logits.shape == (2, 7, 99)
    torch.testing.assert_close(out.loss, model(input_ids, labels=input_ids).loss)
