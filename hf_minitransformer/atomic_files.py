"""Files and folders that appear whole or not at all: written under a temporary name, renamed into place.

A crash, a kill or a failed check while writing never leaves a half-written file or folder under the final name.
Used by scripts/train.py (checkpoint manifests, the training summary), scripts/convert.py and scripts/publish.py.
"""

import contextlib
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path


def write_text_atomically(path: Path, text: str):
    """`path` holds the old text or the new, never part of it: written beside it, then renamed over it."""
    partial = path.with_name(f"{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


@contextlib.contextmanager
def folder_renamed_into_place(final: Path, replace: bool = False) -> Iterator[Path]:
    """A temporary sibling folder of `final` to write into; renamed to `final` when the block ends, removed if it
    raises. With `replace`, an existing `final` is moved aside, not deleted, until the new folder is in place.

    The temporary names carry the host and process id, so what a killed writer left behind (SIGKILL runs no cleanup)
    is recognised and cleaned up by the next writer of `final`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_up_after_killed_writers(final)
    # Not tempfile.mkdtemp, whose folder only its owner may read: the finished folder gets the usual permissions.
    partial = final.parent / f".{final.name}.partial-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    partial.mkdir()
    previous = None
    try:
        yield partial
        if replace and final.exists():
            previous = partial.with_name(partial.name.replace(".partial-", ".replaced-", 1))
            final.rename(previous)
        partial.rename(final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if previous is not None:
        shutil.rmtree(previous)


def clean_up_after_killed_writers(final: Path):
    """Remove the temporary folders of writers of `final` on this host whose process is gone; a folder moved aside
    by a writer killed before its replacement was in place becomes `final` again."""
    pattern = re.compile(rf"\.{re.escape(final.name)}\.(partial|replaced)-{re.escape(socket.gethostname())}-(\d+)-"
                         r"[a-z0-9_]+")
    for path in sorted(final.parent.iterdir()):
        match = pattern.fullmatch(path.name)
        if match is None or is_running(int(match[2])):
            continue
        if match[1] == "replaced" and not final.exists():
            path.rename(final)
        else:
            shutil.rmtree(path, ignore_errors=True)


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True
