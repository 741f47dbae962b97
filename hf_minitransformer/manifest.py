"""The size and sha256 of every file a folder was written with, and the check that the files are still those.

A checkpoint (training/checkpointing.py, `manifest.json`), a training run's final folder (`training_summary.json`,
key "files"), a converted folder (`conversion.json`) and a staged Hub folder (`.publish-staging.json`) record their
files this way; whoever reads the folder later (a resume, scripts/publish.py, scripts/show_model.py, a rerun of
convert.py or publish.py that would replace the folder) compares them with what is there.
"""

import hashlib
import json
from pathlib import Path


def file_sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def describe_files(folder: Path, names: list[str]) -> dict[str, dict]:
    """{name: {"bytes": size, "sha256": digest}} for each of `names` (paths relative to `folder`), sorted by name."""
    return {name: {"bytes": (folder / name).stat().st_size, "sha256": file_sha256(folder / name)}
            for name in sorted(names)}


def files_problem(folder: Path, files: dict[str, dict]) -> str | None:
    """What differs between `folder` and the record `files` (as `describe_files` writes it), for the first file that
    differs; None when every recorded file is there with its size and checksum."""
    for name, expected in files.items():
        file = folder / name
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != expected["bytes"]:
            return f"{name} has {size} bytes where {expected['bytes']} were saved (truncated or overwritten)"
        if file_sha256(file) != expected["sha256"]:
            return f"{name} does not match the checksum it was saved with (corrupted or replaced)"
    return None


def write_folder_record(folder: Path, record: str, **details):
    """Write `record` (JSON: `details` and "files", every other file of `folder` with its size and sha256) into
    `folder`, as the last file written: its presence says that a tool wrote the whole folder."""
    names = [str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()]
    names = [name for name in names if name != record]
    (folder / record).write_text(json.dumps({**details, "files": describe_files(folder, names)}, indent=1) + "\n")


def written_folder_problem(folder: Path, record: str) -> str | None:
    """Why `folder` is not exactly what the tool that leaves `record` in it wrote: no record, an entry the record does
    not list, or a listed file that changed. None when it is, so the tool may replace it without losing anything."""
    try:
        files = json.loads((folder / record).read_text())["files"]
        listed = set(files) | {str(parent) for name in files for parent in Path(name).parents if str(parent) != "."}
    except FileNotFoundError:
        return f"it has no {record}"
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        return f"its {record} is unreadable ({error!r})"
    entries = (str(path.relative_to(folder)) for path in folder.rglob("*"))
    others = sorted(name for name in entries if name not in listed and name != record)
    if others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        return f"it holds {shown}, which {record} does not list"
    return files_problem(folder, files)
