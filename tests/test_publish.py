"""scripts/publish.py: staging, validation through remote code without the package, the upload calls, bad input."""

import json
import platform
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from huggingface_hub import CommitInfo, ModelCard
from huggingface_hub.utils import filter_repo_objects
from transformers import AutoTokenizer

from hf_minitransformer import MiniTransformerForCausalLM
from hf_minitransformer.data import DataArgs
from hf_minitransformer.manifest import describe_files

from .conftest import ROOT, SNIPPETS, edit_summary, load_script, read_summary, run_script, training_output


publish = load_script("publish")

class RecordingHubApi:
    """Stands in for huggingface_hub.HfApi at the network boundary: records the calls, uploads nothing."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        # What huggingface_hub would upload: the folder's files less those matching ignore_patterns.
        files = sorted(filter_repo_objects([p.name for p in Path(kwargs["folder_path"]).iterdir()],
                                           ignore_patterns=kwargs.get("ignore_patterns")))
        self.calls.append(("files", files))
        return CommitInfo(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc123",
                          commit_message=kwargs["commit_message"], commit_description="", oid="abc123",
                          pr_url=f"https://huggingface.co/{kwargs['repo_id']}/discussions/1")


@pytest.fixture(autouse=True)
def _no_token(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stored login either


@pytest.mark.slow  # stages and validates in a subprocess: ~10 s
def test_dry_run_stages_a_sharded_folder_that_validates_without_the_package(tmp_path, capsys):
    source = training_output(tmp_path / "run")
    staged = publish.main([str(source), "--repo_id", "me/mini", "--dry_run", "--max_shard_size", "60KB"])
    out = capsys.readouterr().out
    assert staged == tmp_path / "run-hub"
    names = {p.name for p in staged.iterdir()}
    assert {"config.json", "configuration_minitransformer.py", "modeling_minitransformer.py", "tokenizer.json",
            "generation_config.json", "README.md", "loss_curves.png", "model.safetensors.index.json"} <= names
    assert len([n for n in names if n.endswith(".safetensors")]) > 1  # sharded past --max_shard_size
    auto_map = json.loads((staged / "config.json").read_text())["auto_map"]
    assert {"AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForMaskedLM",
            "AutoModelForSequenceClassification", "AutoModelForTokenClassification"} == set(auto_map)
    # the validation subprocess's report, and the file listing
    assert "remote code transformers_modules." in out and "logits equal the publishing process's" in out
    assert "pipeline('text-generation')" in out and "README.md" in out and "bytes" in out
    card = ModelCard.load(staged / "README.md")
    assert card.data.pipeline_tag == "text-generation" and card.data.library_name == "transformers"
    assert card.data.eval_results[0].metric_value == pytest.approx(148.4)
    assert 'from_pretrained(\n    "me/mini", trust_remote_code=True, revision=' in card.text
    assert "loss_curves.png" in card.text and f"{MiniTransformerForCausalLM.__name__}" in card.text
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


@pytest.mark.slow  # stages and validates in a subprocess: ~10 s
def test_dry_run_of_a_seq2seq_model_validates_its_head_and_pipeline(tmp_path, capsys):
    staged = publish.main([str(training_output(tmp_path / "run", "seq2seq")), "--repo_id", "me/s2s", "--dry_run"])
    out = capsys.readouterr().out
    names = {p.name for p in staged.iterdir()}
    assert {"modeling_minitransformer.py", "loss_minitransformer.py", "pipelines_minitransformer.py"} <= names
    config = json.loads((staged / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForSeq2SeqLM"}  # + the bare model
    assert set(config["custom_pipelines"]) == {"text2text-generation", "translation"}
    assert "ok  AutoModelForSeq2SeqLM logits equal the publishing process's" in out
    assert "ok  pipeline('text2text-generation') from the folder's pipelines_minitransformer.py" in out
    card = ModelCard.load(staged / "README.md")
    assert card.data.pipeline_tag == "text2text-generation"
    metrics = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert metrics == {"perplexity": pytest.approx(148.4), "bleu": 12.5, "chrf": 30.25, "exact_match": 0.125}
    assert "BLEU **12.50**" in card.text and "scores BLEU\n1.50" in card.text
    assert "30 training and 8 held-out (source, target) pairs" in card.text
    assert 'pipeline("text2text-generation", model="me/s2s", trust_remote_code=True' in card.text


@pytest.mark.slow  # stages and validates in a subprocess: ~10 s
def test_upload_calls_create_repo_branch_and_upload_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_never_sent")
    source = training_output(tmp_path / "run", task="mlm")
    api = RecordingHubApi()
    staged = publish.main([str(source), "--repo_id", "me/mini-mlm", "--private", "--revision", "v1",
                           "--create_pr"], api=api)
    kinds = [call[0] for call in api.calls]
    assert kinds == ["create_repo", "create_branch", "upload_folder", "files"]
    assert api.calls[0][2]["private"] is True
    assert api.calls[1][2]["branch"] == "v1"
    upload = api.calls[2][2]
    assert upload["folder_path"] == staged and upload["revision"] == "v1" and upload["create_pr"] is True
    assert "README.md" in api.calls[3][1] and "pipeline('fill-mask')" in capsys.readouterr().out
    assert (staged / ".publish-staging.json").is_file() and ".publish-staging.json" not in api.calls[3][1]
    assert ModelCard.load(staged / "README.md").data.pipeline_tag == "fill-mask"


@pytest.mark.slow  # stages and validates in a subprocess: ~10 s
def test_validation_catches_a_staged_model_that_computes_something_else(tmp_path):
    staged = publish.main([str(training_output(tmp_path / "run")), "--repo_id", "me/mini", "--dry_run"])
    modeling = staged / "modeling_minitransformer.py"
    source = modeling.read_text()
    assert "self.scaling = self.head_dim**-0.5" in source
    modeling.write_text(source.replace("self.scaling = self.head_dim**-0.5", "self.scaling = 1.0"))
    with pytest.raises(publish.ValidationError, match="logits differ"):
        publish.validate(staged, MiniTransformerForCausalLM.from_pretrained(tmp_path / "run"), "clm")


@pytest.mark.parametrize(
    "setup, extra, message",
    [
        (lambda d: d.mkdir(), [], "is not a training output: it needs config.json and model.safetensors"),
        (lambda d: (training_output(d) / "tokenizer.json").unlink() or (d / "tokenizer_config.json").unlink(), [],
         "has no tokenizer"),
        (lambda d: (training_output(d) / "training_summary.json").unlink(), [], "has no training_summary.json"),
        (lambda d: training_output(d), ["--repo_id", "me/bad name!"], "me/bad name!"),
        (lambda d: training_output(d), ["--repo_id", "solo"], "must be 'user-or-org/name', got 'solo'"),
        (lambda d: training_output(d), [], "No Hugging Face token for the upload"),
        (lambda d: (training_output(d) / "config.json").write_text("[1, 2]"), [],
         "config.json' holds a JSON list, not the object (key: value) it must hold"),
        (lambda d: (training_output(d) / "training_summary.json").write_text("[]"), [],
         "training_summary.json' holds a JSON list, not the object (key: value) it must hold"),
        (lambda d: edit_summary(training_output(d), data=None), [],
         "has no 'data' section (the data the run trained and was evaluated on)"),
    ],
)
def test_bad_input_stops_before_anything_is_written(tmp_path, setup, extra, message):
    source = tmp_path / "run"
    setup(source)
    args = [str(source), "--repo_id", "me/mini", *extra]
    api = RecordingHubApi()
    with pytest.raises(ValueError, match=message.replace("!", ".").replace("(", r"\(").replace(")", r"\)")):
        publish.main(args, api=api)
    assert api.calls == []
    assert not (tmp_path / "run-hub").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_not_a_folder_and_existing_staging_folder(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        publish.main([str(tmp_path / "missing"), "--repo_id", "me/mini", "--dry_run"])
    source = training_output(tmp_path / "run")
    (tmp_path / "run-hub").mkdir()
    with pytest.raises(ValueError, match="already exists"):
        publish.main([str(source), "--repo_id", "me/mini", "--dry_run"])


def test_a_crash_while_staging_leaves_no_folder(tmp_path):
    source = training_output(tmp_path / "run")
    with pytest.raises(ValueError):
        publish.main([str(source), "--repo_id", "me/mini", "--dry_run", "--max_shard_size", "lots"])
    assert not (tmp_path / "run-hub").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_command_line_reports_bad_input_without_a_traceback(tmp_path):
    result = run_script(tmp_path, "publish.py", str(tmp_path), "--repo_id", "me/mini", "--dry_run", timeout=120,
                        check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error:") and "Traceback" not in result.stderr


def stage_only(argv: list[str]) -> Path:
    """publish.py's checks and staging, without the validation subprocess (what these tests look at is staged)."""
    args = publish.parse_args(argv)
    summary, _ = publish.check_inputs(args)
    return publish.stage(args, summary)[0]


def test_without_matplotlib_the_card_has_no_plot_and_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    staged = stage_only([str(training_output(tmp_path / "run")), "--repo_id", "me/mini", "--dry_run"])
    assert not (staged / "loss_curves.png").exists()
    assert "loss_curves.png" not in (staged / "README.md").read_text()
    assert ("note: matplotlib is not installed, so the card has no loss plot; to add one, install the publish extra "
            "(pip install -e '.[publish]' in the checkout, or pip install matplotlib) and publish again."
            ) in capsys.readouterr().out


@pytest.mark.parametrize(("metric", "value", "shown"), [
    ("perplexity", float("inf"), "inf"), ("loss", float("nan"), "nan"), ("perplexity", None, "None"),
])
def test_a_metric_that_is_not_a_finite_number_is_refused(tmp_path, metric, value, shown):
    source = training_output(tmp_path / "run")
    edit_summary(source, **{f"final_eval__{metric}": value})  # json writes NaN / Infinity, as older summaries held
    with pytest.raises(ValueError, match=rf"training_summary.json has final_eval {metric} = {shown}; a model card "
                                         "reports finite numbers only"):
        publish.main([str(source), "--repo_id", "me/mini", "--dry_run"])
    assert not (tmp_path / "run-hub").exists()


def test_a_folder_that_mixes_two_runs_is_refused(tmp_path):
    source = training_output(tmp_path / "run")
    tokens = len(AutoTokenizer.from_pretrained(source))
    edit_summary(source, data__tokenizer_size=4096)  # trained with another tokenizer than the one in the folder
    with pytest.raises(ValueError, match=rf"mixes two runs: its tokenizer has {tokens} tokens, but the model's "
                                         rf"vocab_size is {tokens} and training used a tokenizer of 4096"):
        publish.main([str(source), "--repo_id", "me/mini", "--dry_run"])
    edit_summary(source, data__tokenizer_size=tokens, config={"hidden_size": 64})
    with pytest.raises(ValueError, match="mixes two runs: training_summary.json describes a model with hidden_size 64 "
                                         "but config.json has 32"):
        publish.main([str(source), "--repo_id", "me/mini", "--dry_run"])


@pytest.mark.parametrize("data", ["embedded", "train_file"])
def test_staged_files_name_no_path_of_the_build_machine(tmp_path, data):
    source = training_output(tmp_path / "run")
    (tmp_path / "train.txt").write_text("".join(SNIPPETS))
    data_args = DataArgs(max_corpus_bytes=60000) if data == "embedded" else DataArgs(
        train_file=str(tmp_path / "train.txt"))
    edit_summary(source, data={**data_args.describe(), "train_blocks": 3, "validation_blocks": 1, "block_size": 32})
    staged = stage_only([str(source), "--repo_id", "me/mini", "--dry_run"])
    machine_paths = [str(tmp_path), sysconfig.get_paths()["stdlib"], sys.prefix, str(Path.home()), str(ROOT)]
    for file in staged.rglob("*"):
        if file.suffix in (".json", ".md", ".py"):
            text = file.read_text()
            assert not [path for path in machine_paths if path in text], file.name
    card = ModelCard.load(staged / "README.md")
    expected = f"Python {platform.python_version()} standard library" if data == "embedded" else "local file train.txt"
    assert expected in card.data.eval_results[0].dataset_name


def test_a_staged_file_that_names_a_local_path_is_refused(tmp_path):
    source = training_output(tmp_path / "run")
    edit_summary(source, data__source=f"my notes in {tmp_path / 'notes.txt'}")
    with pytest.raises(ValueError, match=rf"The staged README.md contains the local path '{tmp_path}"):
        stage_only([str(source), "--repo_id", "me/mini", "--dry_run"])
    assert not (tmp_path / "run-hub").exists() and not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_the_card_installs_torch_and_transformers_in_the_declared_ranges():
    # A published folder loads as remote code, which needs only torch and transformers: the card's install line names
    # them in the ranges pyproject.toml declares (kept in step here), and not this package, which no index serves.
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    needed = [spec for spec in dependencies if spec.startswith(("torch>", "torch=", "transformers>", "transformers="))]
    template = (ROOT / "model_card.md").read_text()
    assert len(needed) == 2 and "pip install " + " ".join(f'"{spec}"' for spec in needed) in template
    assert "pip install hf_minitransformer" not in template


def check_inputs(argv: list[str]) -> dict:
    return publish.check_inputs(publish.parse_args(argv))[0]


def swap_two_tokens(folder: Path):
    """Another tokenizer of the same size: two tokens trade their ids."""
    data = json.loads((folder / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    first, second = list(vocab)[100], list(vocab)[101]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (folder / "tokenizer.json").write_text(json.dumps(data))


def flip_a_byte(file: Path):
    data = bytearray(file.read_bytes())
    data[-100] ^= 0xFF
    file.write_bytes(bytes(data))


@pytest.mark.parametrize(("change", "message"), [
    # another run's weights: same config, so same size, and the summary's figures are not theirs
    (lambda run, other: (other / "model.safetensors").replace(run / "model.safetensors"),
     "model.safetensors does not match the checksum it was saved with"),
    (lambda run, other: flip_a_byte(run / "model.safetensors"),
     "model.safetensors does not match the checksum it was saved with"),
    (lambda run, other: swap_two_tokens(run), "tokenizer.json (has|does not match)"),
    (lambda run, other: (run / "config.json").unlink(), "is not a training output"),
    (lambda run, other: (run / "generation_config.json").unlink(), "generation_config.json is missing"),
])
def test_a_file_that_is_not_the_one_the_run_saved_is_refused_by_name(tmp_path, change, message):
    run, other = training_output(tmp_path / "run"), training_output(tmp_path / "other")
    assert (run / "model.safetensors").stat().st_size == (other / "model.safetensors").stat().st_size
    tokens = len(AutoTokenizer.from_pretrained(run))
    change(run, other)
    assert len(AutoTokenizer.from_pretrained(run)) == tokens if (run / "config.json").exists() else True
    with pytest.raises(ValueError, match=rf"'.*run'.* {message}"):
        check_inputs([str(run), "--repo_id", "me/mini", "--dry_run"])
    assert not (tmp_path / "run-hub").exists()


def test_a_summary_without_checksums_is_still_published_with_a_note(tmp_path, capsys):
    source = training_output(tmp_path / "run")
    summary = read_summary(source)
    del summary["files"]  # written before the summaries recorded them
    (source / "training_summary.json").write_text(json.dumps(summary))
    assert check_inputs([str(source), "--repo_id", "me/mini", "--dry_run"])["task"] == "clm"
    assert (f"note: training_summary.json of '{source}' records no checksums (it predates them), so its files cannot "
            "be checked against the run that wrote them.") in capsys.readouterr().out


def test_a_rerun_stages_again_over_its_own_staging_folder_and_nothing_else(tmp_path):
    # A dry run, or a failed validation or upload, leaves the staging folder: the corrected rerun must not be blocked.
    source = training_output(tmp_path / "run")
    argv = [str(source), "--repo_id", "me/mini", "--dry_run"]
    staged = stage_only(argv)
    (staged / "README.md").write_text("a card from an earlier, failed attempt")
    record = json.loads((staged / ".publish-staging.json").read_text())
    record["files"]["README.md"] = describe_files(staged, ["README.md"])["README.md"]
    (staged / ".publish-staging.json").write_text(json.dumps(record))  # as if that attempt had staged this card
    assert stage_only(argv) == staged
    assert "a card from an earlier" not in (staged / "README.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "run-hub"]  # nothing left aside
    # What publish.py did not stage, or staged and someone changed since, is never replaced.
    (staged / "LICENSE").write_text("my license text")
    with pytest.raises(ValueError, match=r"Staging folder '.*run-hub' already exists and is not one publish.py "
                                         r"staged, unchanged since: it holds LICENSE, which .publish-staging.json "
                                         r"does not list\. Remove it, or pass another --staging_dir"):
        check_inputs(argv)
    (staged / "LICENSE").unlink()
    (staged / "README.md").write_text("edited by hand")
    with pytest.raises(ValueError, match=r"README.md has \d+ bytes where \d+ were saved"):
        check_inputs(argv)
    with pytest.raises(ValueError, match=r"Staging folder '.*run' holds the training output"):
        check_inputs([*argv, "--staging_dir", str(source)])


@pytest.mark.slow  # stages and validates twice in a subprocess: ~20 s
def test_the_readmes_dry_run_then_upload_works(tmp_path, monkeypatch):
    source = training_output(tmp_path / "run")
    staged = publish.main([str(source), "--repo_id", "me/mini", "--dry_run"])
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_never_sent")
    api = RecordingHubApi()
    assert publish.main([str(source), "--repo_id", "me/mini"], api=api) == staged
    assert [call[0] for call in api.calls] == ["create_repo", "upload_folder", "files"]


@pytest.mark.parametrize(("license_id", "message"), [
    ("Apache 2", "--license must be a license identifier of the Hub, got 'Apache 2'; see "
                 "https://huggingface.co/docs/hub/repositories-licenses, or pass 'other' and add the license text "
                 "as a LICENSE file"),
    ("MIT", "got 'MIT' (did you mean 'mit'?)"),
    ("Apache 2.0", "got 'Apache 2.0' (did you mean 'apache-2.0'?)"),
])
def test_a_license_the_hub_does_not_know_is_refused(capsys, license_id, message):
    with pytest.raises(SystemExit) as exit_info:
        publish.parse_args(["run", "--repo_id", "me/mini", "--license", license_id])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    for known in ("apache-2.0", "cc-by-nc-sa-4.0", "other"):
        assert publish.parse_args(["run", "--repo_id", "me/mini", "--license", known]).license == known


def test_a_hostile_file_name_stays_in_its_table_cell(tmp_path):
    source = training_output(tmp_path / "run")
    edit_summary(source, data__source="local file a|b\n| injected | row |\n<img src=x onerror=alert(1)>.txt")
    staged = stage_only([str(source), "--repo_id", "me/mini", "--dry_run"])
    card = ModelCard.load(staged / "README.md")
    rows = [line for line in card.text.splitlines() if line.startswith("| data |")]
    assert rows == [r"| data | local file a\|b \| injected \| row \| &lt;img src=x onerror=alert(1)&gt;.txt |"]
    assert "| injected |" not in card.text and "<img" not in card.text
    # In the metadata the name is YAML data, quoted as YAML quotes it, on one line as every other field.
    expected = "local file a|b | injected | row | <img src=x onerror=alert(1)>.txt"
    assert card.data.eval_results[0].dataset_name == expected

