"""Atomic files and folders: flush to disk, and swap a finished folder into place.

Writers elsewhere write under a temporary name, fsync, then rename: a crash leaves either the old file or folder or
the new one, never half of one. Light on purpose (no torch), so the nano-world and CLI modules can use it.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path


def fsync(path: str) -> None:
    """Flush a file, or a folder's entries, to disk (a rename is durable only once the folder holding it is).
    Where a filesystem cannot sync folders (some network and FUSE ones, Windows), a folder is left as it is."""
    folder = os.path.isdir(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if folder:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        if not (folder and e.errno in (errno.EINVAL, errno.ENOTSUP, errno.ENOSYS, errno.EBADF)):
            raise
    finally:
        os.close(fd)


def fsync_folder(folder: str) -> None:
    """fsync every file directly in `folder`, then the folder itself: all of it is on disk before a rename."""
    for name in os.listdir(folder):
        fsync(os.path.join(folder, name))
    fsync(folder)


def replace_folder(tmp: str | Path, out: str | Path) -> None:
    """Move the finished folder `tmp` to `out` (beside it, same filesystem), replacing any `out` there: the old one is
    renamed aside first and deleted only once the new one is in place, so a crash leaves one of the two whole."""
    tmp, out = Path(tmp), Path(out)
    fsync_folder(str(tmp))
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)
    fsync(str(out.parent))


def write_text(path: str | Path, text: str, tmp: str | Path | None = None) -> None:
    """Write a text file whole or not at all: a temporary file (default: path + ".tmp"), flushed to disk, renamed
    into place, and the rename flushed too. A reader sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync(str(path.parent.resolve()))
