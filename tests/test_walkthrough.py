"""hf_minitransformer.walkthrough and scripts/inspect_model.py: the source document's data flow traced on a real
forward pass (the traced tensors are the model's own), the table, the figures and the page, which a real browser
renders.
"""

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import transformers

from hf_minitransformer import MiniTransformerModel
from hf_minitransformer.data import train_bpe_tokenizer
from hf_minitransformer.training.tasks import TASKS
from hf_minitransformer.walkthrough import Stage, top_predictions, trace

from .conftest import ROOT, load_script, make_config, run_command, run_python, script_env


TEXTS = ["March 14th, 1987", "1987-03-14", "the cat sat on the mat", "def add(a, b): return a + b"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(iter([TEXTS]), vocab_size=300, with_mask_token=True, split_digits=True)


def build(task: str, tokenizer, attn_implementation: str = "sdpa", **overrides):
    config = make_config(vocab_size=len(tokenizer), is_decoder=task == "clm", pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         decoder_start_token_id=tokenizer.bos_token_id, **overrides)
    config._attn_implementation = attn_implementation
    return TASKS[task].model_class(config).eval()


def own_forward(model, tokenizer, text: str, target: str | None):
    """The model's own eager forward pass on the same tokens: (logits, hidden states of every layer)."""
    input_ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    model.set_attn_implementation("eager")
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
            decoder_input_ids = torch.tensor([[model.config.decoder_start_token_id, *target_ids]])
            outputs = model(input_ids, decoder_input_ids=decoder_input_ids, output_hidden_states=True)
            return outputs.logits[0], outputs.encoder_hidden_states, outputs.decoder_hidden_states
        outputs = model(input_ids, output_hidden_states=True)
        return outputs.logits[0], outputs.hidden_states, None


@pytest.mark.parametrize("loaded_with", ["sdpa", "eager"])
@pytest.mark.parametrize("task", ["mlm", "clm", "seq2seq"])
def test_traced_tensors_are_the_forward_pass_of_the_model(task, loaded_with, tokenizer):
    model = build(task, tokenizer, loaded_with)
    model.train()  # the trace runs in eval mode, then gives the model back as it was
    target = "1987-03-14" if task == "seq2seq" else None
    walkthrough = trace(model, tokenizer, "March 14th, 1987", target)
    assert model.training and model.config._attn_implementation == loaded_with
    for stack in (model.get_encoder(), model.get_decoder()) if task == "seq2seq" else (model.base_model,):
        assert stack.config._attn_implementation == loaded_with

    model.eval()
    if loaded_with == "sdpa":
        with torch.no_grad():
            sdpa_logits = model(**_inputs(model, tokenizer, "March 14th, 1987", target)).logits[0]
        torch.testing.assert_close(walkthrough.logits, sdpa_logits, atol=1e-5, rtol=1e-5)
    logits, hidden_states, decoder_hidden_states = own_forward(model, tokenizer, "March 14th, 1987", target)
    assert torch.equal(walkthrough.logits, logits)
    assert torch.equal(walkthrough["logits"].tensor, logits)
    last_stack_states = decoder_hidden_states if task == "seq2seq" else hidden_states
    assert torch.equal(walkthrough.last_hidden_state, last_stack_states[-1][0])
    # Every layer's recorded output is the hidden state the model itself reports after that layer.
    prefix = "decoder." if task == "seq2seq" else ""
    for layer in range(model.config.num_hidden_layers):
        assert torch.equal(walkthrough[f"{prefix}layer{layer}.output"].tensor, last_stack_states[layer + 1][0])
    if task == "seq2seq":
        assert torch.equal(walkthrough["encoder.layer1.output"].tensor, hidden_states[-1][0])


def _inputs(model, tokenizer, text, target):
    input_ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    if not model.config.is_encoder_decoder:
        return {"input_ids": input_ids}
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    return {"input_ids": input_ids,
            "decoder_input_ids": torch.tensor([[model.config.decoder_start_token_id, *target_ids]])}


def test_stages_follow_the_equations_of_the_document(tokenizer):
    """The recorded stages fit together as the document's equations say, layer by layer, in the encoder and in the
    decoder (masked self-attention, cross-attention whose K and V come from the encoder output)."""
    model = build("seq2seq", tokenizer)
    walkthrough = trace(model, tokenizer, "March 14th, 1987", "1987-03-14")
    sizes = walkthrough.sizes
    n, m, h, d_k = sizes["n"], sizes["m"], sizes["h"], sizes["d_k"]
    assert (n, m, h, d_k, sizes["d_model"], sizes["d_ff"]) == (11, 11, 4, 8, 32, 37)
    assert walkthrough.tokens["source"] == ["March", " ", "1", "4", "th", ",", " ", "1", "9", "8", "7"]
    assert walkthrough.tokens["target"][0] == tokenizer.bos_token

    embeddings = {name: walkthrough[f"encoder.embeddings.{name}"].tensor for name in ("tokens", "positions", "sum")}
    torch.testing.assert_close(embeddings["tokens"] + embeddings["positions"], embeddings["sum"])
    input_ids = tokenizer("March 14th, 1987", add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    torch.testing.assert_close(embeddings["tokens"], model.get_input_embeddings()(input_ids) * 32**0.5)

    encoder_output = walkthrough["encoder.layer1.output"].tensor
    for stack, kinds in (("encoder", ["self_attn"]), ("decoder", ["masked_self_attn", "cross_attn"])):
        layers = (model.get_encoder() if stack == "encoder" else model.get_decoder()).layers
        for index, layer in enumerate(layers):
            x = walkthrough[f"{stack}.layer{index - 1}.output" if index else f"{stack}.embeddings.sum"].tensor
            for kind in kinds:
                stage = {name: walkthrough[f"{stack}.layer{index}.{kind}.{name}"].tensor
                         for name in ("Q", "K", "V", "scores", "weights", "heads", "multihead", "add_norm")}
                q_len, kv_len = (m, n) if kind == "cross_attn" else ((n, n) if stack == "encoder" else (m, m))
                assert stage["scores"].shape == stage["weights"].shape == (h, q_len, kv_len)
                assert stage["Q"].shape == (h, q_len, d_k) and stage["K"].shape == stage["V"].shape == (h, kv_len, d_k)
                torch.testing.assert_close(stage["weights"], torch.softmax(stage["scores"], dim=-1))
                torch.testing.assert_close(stage["weights"].sum(-1), torch.ones(h, q_len))
                torch.testing.assert_close(stage["heads"], stage["weights"] @ stage["V"])
                attention = layer.cross_attn if kind == "cross_attn" else layer.self_attn
                source = encoder_output if kind == "cross_attn" else x  # K, V from the encoder output
                torch.testing.assert_close(stage["K"], attention.k_proj(source).view(kv_len, h, d_k).transpose(0, 1))
                torch.testing.assert_close(stage["Q"], attention.q_proj(x).view(q_len, h, d_k).transpose(0, 1))
                concat = stage["heads"].transpose(0, 1).reshape(q_len, h * d_k)
                torch.testing.assert_close(stage["multihead"], attention.o_proj(concat))
                norm = layer.cross_attn_layer_norm if kind == "cross_attn" else layer.attn_layer_norm
                torch.testing.assert_close(stage["add_norm"], norm(x + stage["multihead"]))
                if kind == "masked_self_attn":  # position t attends to positions <= t only
                    future = torch.ones(m, m, dtype=torch.bool).triu(1)
                    assert (stage["weights"][:, future] == 0).all() and stage["weights"][:, ~future].gt(0).all()
                x = stage["add_norm"]
            hidden = walkthrough[f"{stack}.layer{index}.ffn.hidden"].tensor
            ffn = walkthrough[f"{stack}.layer{index}.ffn.output"].tensor
            torch.testing.assert_close(hidden, torch.relu(layer.feed_forward.fc1(x)))
            assert hidden.shape == (q_len, sizes["d_ff"]) and hidden.min() >= 0
            torch.testing.assert_close(walkthrough[f"{stack}.layer{index}.ffn.add_norm"].tensor,
                                       layer.ffn_layer_norm(x + ffn))
    probabilities = walkthrough["probabilities"].tensor
    torch.testing.assert_close(probabilities, torch.softmax(walkthrough.logits, dim=-1))


def test_causal_scores_are_masked_and_stages_come_in_document_order(tokenizer):
    model = build("clm", tokenizer)
    walkthrough = trace(model, tokenizer, "the cat sat on the mat")
    scores = walkthrough["layer0.masked_self_attn.scores"]
    n = walkthrough.sizes["n"]
    assert "causal mask" in scores.symbol and scores.dims == ("h", "n", "n")
    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    assert (scores.tensor[:, future] < -1e30).all()
    shorts = [name.split(".", 2)[-1] for name in walkthrough.names() if name.startswith("layer0.")]
    assert shorts == ["Q", "K", "V", "scores", "weights", "heads", "multihead", "add_norm", "hidden", "output",
                      "add_norm", "output"]
    assert walkthrough.names()[:4] == ["embeddings.ids", "embeddings.tokens", "embeddings.positions", "embeddings.sum"]
    input_ids = tokenizer("the cat sat on the mat", add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    assert torch.equal(walkthrough["embeddings.ids"].tensor, input_ids)
    assert walkthrough.names()[-3:] == ["final.hidden", "logits", "probabilities"]


@pytest.mark.parametrize("overrides", [{"layer_norm_position": "pre"}, {"position_embedding_type": "rotary"},
                                       {"position_embedding_type": "learned", "hidden_act": "gelu"}])
def test_variants_trace_the_same_logits(overrides, tokenizer):
    model = build("clm", tokenizer, **overrides)
    walkthrough = trace(model, tokenizer, "the cat sat")
    logits, hidden_states, _ = own_forward(model, tokenizer, "the cat sat", None)
    assert torch.equal(walkthrough.logits, logits)
    assert ("embeddings.positions" in walkthrough.names()) == (overrides.get("position_embedding_type") != "rotary")


def test_masked_lm_predicts_at_its_first_mask(tokenizer):
    model = build("mlm", tokenizer)
    walkthrough = trace(model, tokenizer, f"the {tokenizer.mask_token} sat on the mat")
    position = walkthrough.tokens["input"].index(tokenizer.mask_token)
    assert walkthrough.prediction_position == position and f"position {position}" in walkthrough.predicts
    top = top_predictions(walkthrough, tokenizer, k=3)
    probabilities = walkthrough["probabilities"].tensor[position]
    assert [p for _, p in top] == pytest.approx(probabilities.topk(3).values.tolist())


def test_each_stack_gets_its_own_attention_implementation_back(tokenizer):
    model = build("seq2seq", tokenizer)
    model.get_encoder().set_attn_implementation("eager")
    before = [(name, module.config._attn_implementation) for name, module in model.named_modules()
              if hasattr(module, "set_attn_implementation")]
    assert {implementation for _, implementation in before} == {"sdpa", "eager"}
    trace(model, tokenizer, "March 14th, 1987", "1987-03-14")
    after = [(name, module.config._attn_implementation) for name, module in model.named_modules()
             if hasattr(module, "set_attn_implementation")]
    assert after == before


def test_bad_input_is_a_value_error(tokenizer):
    model = build("clm", tokenizer)
    with pytest.raises(ValueError, match="target is for an encoder-decoder model; MiniTransformerForCausalLM"):
        trace(model, tokenizer, "the cat", target="sat")
    with pytest.raises(ValueError, match="text must be a non-empty string"):
        trace(model, tokenizer, "")
    assert model.config._attn_implementation == "sdpa"


REMOTE_CODE_TRACE = """
import torch
import transformers

folder = sys.argv[1]
model = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True).eval()
tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
# Imported after loading: the package registers its own classes with the Auto classes, which would win.
from hf_minitransformer.walkthrough import trace
walkthrough = trace(model, tokenizer, "March 14th, 1987", "1987-03-14")
torch.save({"module": type(model).__module__, "logits": walkthrough.logits,
            "weights": walkthrough["decoder.layer1.cross_attn.weights"].tensor,
            "implementation": model.config._attn_implementation}, f"{folder}/traced.pt")
"""


@pytest.mark.slow  # a fresh interpreter loading remote code: ~10 s
def test_a_model_loaded_through_remote_code_traces_the_same(tokenizer, tmp_path, one_thread):
    """A downloaded folder runs its own copy of the modeling code (trust_remote_code): the trace uses that copy's
    eager attention, and gives what the installed package's model gives."""
    model = build("seq2seq", tokenizer)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    run_python(REMOTE_CODE_TRACE, tmp_path, str(tmp_path / "model"), block_package=False)
    traced = torch.load(tmp_path / "model" / "traced.pt")
    assert traced["module"].startswith("transformers_modules.") and traced["implementation"] == "sdpa"
    local = trace(model, tokenizer, "March 14th, 1987", "1987-03-14")
    assert torch.equal(traced["logits"], local.logits)
    assert torch.equal(traced["weights"], local["decoder.layer1.cross_attn.weights"].tensor)


# --- scripts/inspect_model.py --------------------------------------------------------------------------------------

inspect_model = load_script("inspect_model")


@pytest.fixture(scope="module")
def inspected(tokenizer, tmp_path_factory):
    """A saved tiny encoder-decoder run through the command once: (output folder, printed text, walkthrough)."""
    pytest.importorskip("matplotlib")
    folder = tmp_path_factory.mktemp("model")
    build("seq2seq", tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = folder / "inspect"
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        walkthrough = inspect_model.main([str(folder), "--text", "March 14th, 1987", "--target", "1987-03-14",
                                          "--output_dir", str(out)])
    return out, printed.getvalue(), walkthrough


def test_inspect_prints_the_table_and_writes_the_figures(inspected):
    out, printed, walkthrough = inspected
    assert "Sizes: n=11, d_model=32, h=4, d_k=8, d_ff=37, N=2, vocab=" in printed
    lines = printed.splitlines()
    row = next(line for line in lines if line.startswith("encoder.layer0.self_attn.scores "))
    assert "Q_i K_i^T / sqrt(d_k)" in row and "(h=4, n=11, n=11)" in row
    row = next(line for line in lines if line.startswith("decoder.layer1.cross_attn.weights "))
    assert "(h=4, m=11, n=11)" in row
    row = next(line for line in lines if line.startswith("decoder.layer0.ffn.hidden "))
    assert "(m=11, d_ff=37)" in row
    first = walkthrough["encoder.embeddings.sum"].tensor[0, :4].tolist()
    row = next(line for line in lines if line.startswith("encoder.embeddings.sum "))
    assert "[" + ", ".join(f"{v:.3g}" for v in first) + ", ...]" in row
    row = next(line for line in lines if line.startswith("probabilities "))
    assert row.count("the token after the last one:") == 1

    expected = {"positional_encoding.png", "walkthrough.html", "walkthrough.tsv"} | {
        f"attention_{stack}_layer{i}_{kind}.png" for i in range(2)
        for stack, kind in (("encoder", "self_attn"), ("decoder", "masked_self_attn"), ("decoder", "cross_attn"))}
    assert {p.name for p in out.iterdir()} == expected
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    tsv = (out / "walkthrough.tsv").read_text().splitlines()
    assert len(tsv) == len(walkthrough.stages) + 1 and tsv[0].split("\t")[0] == "stage"


def test_inspect_page_is_self_contained_and_in_document_order(inspected):
    out, _, walkthrough = inspected
    page = (out / "walkthrough.html").read_text()
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', page)
    assert len(images) == 7 and "src=\"http" not in page and "<link" not in page
    # Each attention figure comes right after the row of its weights, in the order of the forward pass.
    weights = [name for name in walkthrough.names() if name.endswith(".weights")]
    assert images == ["encoder.embeddings.positions", *weights]
    positions = [page.index(f"<td>{name}</td>") for name in walkthrough.names()]
    assert positions == sorted(positions)


def test_inspect_rejects_a_folder_without_a_model(tmp_path):
    with pytest.raises(ValueError, match="is not a saved model folder"):
        inspect_model.main([str(tmp_path), "--text", "x", "--output_dir", str(tmp_path / "out")])


def saved(folder: Path, model, tokenizer) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def damage(folder: Path, how: str) -> Path:
    if how == "truncated":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return folder


def with_nan(model):
    with torch.no_grad():
        model.base_model.layers[1].feed_forward.fc1.weight[3, 4] = float("nan")
    return model


@pytest.mark.parametrize(("make", "extra", "message"), [
    (lambda d, t: saved(d, transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=len(t), n_embd=32, n_layer=2, n_head=4)), t), [],
     r"MODEL '.*' is a 'gpt2' model; the walkthrough traces MiniTransformer models only \(a Marian, GPT-2 or BERT "
     r"checkpoint converts with scripts/convert.py\)"),
    (lambda d, t: saved(d, transformers.BertModel(transformers.BertConfig(
        vocab_size=len(t), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)), t), [],
     "is a 'bert' model"),
    (lambda d, t: damage(saved(d, build("clm", t), t), "truncated"), [],
     r"the weights do not load \(Error while deserializing header.*\); the file is truncated or damaged"),
    (lambda d, t: saved(d, with_nan(build("clm", t)), t), [],
     r"has weights that are not finite numbers \(model.layers.1.feed_forward.fc1.weight holds NaN or inf\)"),
    (lambda d, t: saved(d, build("clm", t), t), ["--target", "sat"],
     "target is for an encoder-decoder model; MiniTransformerForCausalLM reads one text"),
])
def test_inspect_refuses_what_it_cannot_trace_in_one_message(tokenizer, tmp_path, make, extra, message):
    folder = make(tmp_path / "model", tokenizer)
    with pytest.raises(ValueError, match=message):
        inspect_model.main([str(folder), "--text", "the cat", "--output_dir", str(tmp_path / "out"), *extra])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--text", ""], "error: --text must not be empty: the walkthrough follows its tokens"),
    (["--text", "x", "--output_dir", "{tmp}/file"], "error: --output_dir '{tmp}/file' cannot be a folder: "
                                                    "'{tmp}/file' is a file"),
    (["--text", "x", "--output_dir", "{tmp}/file/out"], "cannot be a folder: '{tmp}/file' is a file"),
])
def test_inspect_arguments_are_checked_when_parsed(tmp_path, capsys, args, message):
    (tmp_path / "file").write_text("x")
    argv = ["model", "--output_dir", str(tmp_path / "out"), *[a.format(tmp=tmp_path) for a in args]]
    with pytest.raises(SystemExit) as exit_info:
        inspect_model.parse_args(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message.format(tmp=tmp_path))


def test_inspect_says_what_it_shows_of_a_model_without_a_language_model_head(tokenizer, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    config = build("mlm", tokenizer).config
    folder = saved(tmp_path / "model", MiniTransformerModel(config), tokenizer)
    inspect_model.main([str(folder), "--text", "the cat", "--output_dir", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert (f"note: {folder} holds a MiniTransformerModel without the weights of a language-model head "
            "(lm_head.bias, newly initialised here): the stages up to the final hidden states are the saved model's, "
            "the logits and probabilities come from an untrained head.") in out
    assert "final.hidden" in out and (tmp_path / "out" / "walkthrough.html").is_file()


def test_inspect_shows_token_ids_as_integers_and_masked_scores_as_masked():
    ids = Stage("embeddings.ids", "Token ids", "tokens", ("n",), torch.tensor([2740, 31999, 5]))
    assert inspect_model.values_text(ids) == "[2740, 31999, 5]"
    lowest = torch.finfo(torch.float32).min
    scores = Stage("layer0.masked_self_attn.scores", "Scaled scores (masked)", "", ("h", "n", "n"),
                   torch.tensor([[[0.25, lowest + 1.0, float("-inf"), 1e30, 2.0]]]))
    assert inspect_model.values_text(scores) == "[0.25, masked, masked, 1e+30, ...]"


def test_inspect_page_of_a_decoder_only_model_is_not_titled_as_a_decoder(tokenizer, tmp_path):
    pytest.importorskip("matplotlib")
    folder = saved(tmp_path / "model", build("clm", tokenizer), tokenizer)
    inspect_model.main([str(folder), "--text", "the cat sat", "--output_dir", str(tmp_path / "out")])
    page = (tmp_path / "out" / "walkthrough.html").read_text()
    assert "<h2>layer 0: Masked self-attention: position t sees positions &lt;= t only</h2>" in page
    headings = re.findall(r"<h2>(.*?)</h2>", page)
    assert len(headings) > 4 and not [heading for heading in headings if "decoder" in heading]
    assert "masked, masked" in page


@pytest.mark.slow  # a fresh interpreter: ~10 s
def test_inspect_command_line_prints_one_error_line_and_exits_1(tokenizer, tmp_path):
    folder = saved(tmp_path / "gpt2", transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4)), tokenizer)
    result = run_command([sys.executable, str(ROOT / "scripts" / "inspect_model.py"), str(folder), "--text", "x",
                          "--output_dir", str(tmp_path / "out")], script_env(tmp_path), timeout=120, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: MODEL '{folder}' is a 'gpt2' model; the walkthrough traces MiniTransformer models only (a Marian, "
        "GPT-2 or BERT checkpoint converts with scripts/convert.py).")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Read after the page has loaded: how many images there are, and how many of them the browser decoded.
PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const decoded = images.filter(img => img.complete && img.naturalWidth > 0 && img.naturalHeight > 0);
  document.body.setAttribute("data-images", images.length + "/" + decoded.length);
});
</script></body>"""


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (installed by .ci/run)")
def test_inspect_page_renders_in_a_real_browser(inspected):
    out, _, _ = inspected
    page = (out / "walkthrough.html").read_text()
    with tempfile.TemporaryDirectory() as profile:
        probed = Path(profile) / "probed.html"
        probed.write_text(page.replace("</body>", PROBE), encoding="utf-8")
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}/user-data", "--virtual-time-budget=5000"]
        env = {**os.environ, "HOME": profile}
        result = run_command([CHROMIUM, *flags, "--dump-dom", probed.as_uri()], env, timeout=120)
        found = re.search(r'data-images="(\d+)/(\d+)"', result.stdout)
        assert found, result.stdout[:500] + result.stderr[-2000:]
        assert found.group(1) == found.group(2) == "7"  # every figure decoded
        shot = out.parent / "screenshot.png"  # beside the folder whose file list another test checks
        result = run_command([CHROMIUM, *flags, "--window-size=1400,2400", f"--screenshot={shot}",
                              (out / "walkthrough.html").as_uri()], env, timeout=120)
        assert shot.stat().st_size > 10000, result.stderr[-2000:]
