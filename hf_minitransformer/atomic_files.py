"""Files and folders that appear whole or not at all: written under a temporary name, renamed into place.

A crash, a kill or a failed check while writing never leaves a half-written file or folder under the final name.
Used by scripts/train.py (checkpoint manifests, the training summary), scripts/convert.py and scripts/publish.py.
"""

import contextlib
import os
import shutil
import tempfile
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
    raises. With `replace`, an existing `final` is moved aside, not deleted, until the new folder is in place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    previous = None
    try:
        yield partial
        if replace and final.exists():
            previous = final.with_name(f".{final.name}.replaced-{partial.name.rsplit('-', 1)[-1]}")
            final.rename(previous)
        partial.rename(final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if previous is not None:
        shutil.rmtree(previous)
