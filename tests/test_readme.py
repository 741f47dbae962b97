"""README.md's snippets run as printed. Here the one that needs no trained folder: it must write under outputs/
(git-ignored), never into the folder it is run from. The converted folder's fill-mask line runs in
tests/test_convert_bert.py and the lm-evaluation-harness block in tests/test_lm_eval.py.
"""

from .conftest import readme_block


def test_the_auto_classes_snippet_writes_only_under_outputs(tmp_path, monkeypatch):
    code = readme_block('model.save_pretrained("', "python")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert [p.name for p in tmp_path.iterdir()] == ["outputs"]
    assert (tmp_path / "outputs" / "my-model" / "model.safetensors").is_file()
