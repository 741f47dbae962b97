"""hf_minitransformer/atomic_files.py and manifest.py: what a killed writer leaves behind is cleaned up by the next
writer of the same folder (scripts/convert.py and scripts/publish.py write through it), and a folder's record of its
files tells a folder a tool wrote from one that holds anything else.

The writers are real processes killed with SIGKILL at the moment named, so they run no cleanup of their own.
"""

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hf_minitransformer.atomic_files import folder_renamed_into_place
from hf_minitransformer.manifest import write_folder_record, written_folder_problem

from .conftest import ROOT, run_command, script_env


# Loads atomic_files.py by path (the package's import of transformers would take seconds), then writes FINAL and
# kills itself at MOMENT: while writing the new folder, or once the old one is moved aside and the new one not yet in
# place; "while waiting" prints its temporary folder and waits for stdin to close, then finishes.
KILLED_WRITER = """
import importlib.util, os, signal, sys
from pathlib import Path

spec = importlib.util.spec_from_file_location("atomic_files", sys.argv[1])
atomic_files = importlib.util.module_from_spec(spec)
spec.loader.exec_module(atomic_files)
final, moment = Path(sys.argv[2]), sys.argv[3]
rename = Path.rename

def rename_then_die(self, target):
    result = rename(self, target)
    if ".replaced-" in str(target):
        os.kill(os.getpid(), signal.SIGKILL)
    return result

if moment == "while replacing":
    Path.rename = rename_then_die
with atomic_files.folder_renamed_into_place(final, replace=True) as partial:
    (partial / "weights").write_text("new")
    if moment == "while writing":
        os.kill(os.getpid(), signal.SIGKILL)
    if moment == "while waiting":
        print(partial, flush=True)
        sys.stdin.read()
"""
ATOMIC_FILES = ROOT / "hf_minitransformer" / "atomic_files.py"


def killed_writer(final: Path, moment: str, tmp_path: Path):
    result = run_command([sys.executable, "-c", KILLED_WRITER, str(ATOMIC_FILES), str(final), moment],
                         script_env(tmp_path), check=False, timeout=60)
    assert result.returncode == -signal.SIGKILL, result.stderr


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_the_next_writer_removes_what_a_killed_writer_left(tmp_path):
    final = tmp_path / "out"
    killed_writer(final, "while writing", tmp_path)
    assert [name.split("-")[0] for name in hidden(tmp_path)] == [".out.partial"] and not final.exists()
    with folder_renamed_into_place(final) as partial:
        (partial / "weights").write_text("mine")
    assert hidden(tmp_path) == [] and (final / "weights").read_text() == "mine"


def test_a_folder_moved_aside_by_a_killed_writer_is_put_back(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "weights").write_text("old")
    killed_writer(final, "while replacing", tmp_path)
    assert not final.exists()  # the old folder is aside, the new one was never renamed into place
    with pytest.raises(RuntimeError), folder_renamed_into_place(final, replace=True):
        raise RuntimeError("the next writer fails too")
    assert hidden(tmp_path) == [] and (final / "weights").read_text() == "old"


def test_a_running_writers_folder_is_left_alone(tmp_path):
    final = tmp_path / "out"
    command = [sys.executable, "-c", KILLED_WRITER, str(ATOMIC_FILES), str(final), "while waiting"]
    writer = subprocess.Popen(command, env=script_env(tmp_path), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        its_folder = Path(writer.stdout.readline().strip())
        with folder_renamed_into_place(tmp_path / "out") as partial:
            (partial / "weights").write_text("mine")
        assert (its_folder / "weights").read_text() == "new"
    finally:
        writer.communicate("", timeout=60)
    assert (final / "weights").read_text() == "new"  # the other writer finished last, and replaced mine


def test_the_record_tells_a_written_folder_from_anything_else(tmp_path):
    folder = tmp_path / "out"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    (folder / "sub" / "b.txt").write_text("b")
    assert written_folder_problem(folder, "record.json") == "it has no record.json"
    write_folder_record(folder, "record.json", source="x")
    assert written_folder_problem(folder, "record.json") is None
    (folder / "sub" / "c.txt").write_text("c")
    (folder / "empty").mkdir()
    assert written_folder_problem(folder, "record.json") == (
        "it holds empty, sub/c.txt, which record.json does not list")
    (folder / "sub" / "c.txt").unlink()
    (folder / "empty").rmdir()
    (folder / "a.txt").write_text("A")
    assert written_folder_problem(folder, "record.json") == (
        "a.txt does not match the checksum it was saved with (corrupted or replaced)")
    (folder / "record.json").write_text("[1]")
    assert written_folder_problem(folder, "record.json").startswith("its record.json is unreadable")


def test_a_written_folder_has_the_permissions_of_any_new_folder(tmp_path):
    with folder_renamed_into_place(tmp_path / "model") as partial:
        (partial / "config.json").write_text("{}")
    (tmp_path / "plain").mkdir()
    assert (tmp_path / "model").stat().st_mode == (tmp_path / "plain").stat().st_mode  # not mkdtemp's owner-only 0700
