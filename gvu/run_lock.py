"""One writer per run folder: an exclusive flock on RUN/.gvu-lock, held for the run's life.

`gvu train` (rank 0 under torchrun) takes it before it changes anything in its --out (before --overwrite deletes
an old run, before --resume truncates the logs) and keeps it until it ends; pretraining can take the same lock
(hold_run_lock). A second process that asks for a held lock gets a UserError naming the holder's pid at once (it
does not wait). The kernel drops a flock when its holder exits, even by kill -9, so a crashed run never leaves a
stale lock: the file may remain, with a dead pid in it, and the next run takes it over.

The lock file is removed when its holder lets go. Because a file can be unlinked while another process waits to
lock it, a lock counts only when the path still names the file that was locked (acquire compares their inodes).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator

from gvu.errors import UserError

LOCK_NAME = ".gvu-lock"


class RunLocked(UserError):
    """Another process holds the run folder's lock."""


def lock_path(run_dir: str) -> str:
    return os.path.join(run_dir, LOCK_NAME)


def holder_pid(run_dir: str) -> str:
    """The pid written in the lock file ('?' when it cannot be read)."""
    try:
        with open(lock_path(run_dir)) as f:
            return f.read(32).strip() or "?"
    except OSError:
        return "?"


def _refusal(run_dir: str, why: str) -> RunLocked:
    pid = holder_pid(run_dir)
    return RunLocked(f"{run_dir} is in use by another gvu process (pid {pid}), which holds {lock_path(run_dir)}; "
                     f"{why}. Wait for it to finish (or stop it: kill {pid}), or pick another --out")


def entries(run_dir: str) -> list[str]:
    """The folder's entries without the lock file (what a run folder holds, for the emptiness checks)."""
    return [n for n in os.listdir(run_dir) if n != LOCK_NAME]


class RunLock:
    """An exclusive lock on one run folder; acquire() makes the folder if needed, release() removes what it made."""

    def __init__(self, run_dir: str, why: str = "two processes writing one run would corrupt it"):
        self.run_dir, self.why = run_dir, why
        self.fd: int | None = None
        self.made_folder = False

    def acquire(self) -> "RunLock":
        if self.fd is not None:
            return self
        if not os.path.isdir(self.run_dir):
            os.makedirs(self.run_dir)
            self.made_folder = True
        path = lock_path(self.run_dir)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise _refusal(self.run_dir, self.why) from None
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder we waited on removed the file: lock the one that names the path now
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.remove(lock_path(self.run_dir))  # while still locked: see the module docstring
        os.close(self.fd)
        self.fd = None
        if self.made_folder:
            with contextlib.suppress(OSError):
                os.rmdir(self.run_dir)  # only if nothing else was written into it

    @property
    def held(self) -> bool:
        return self.fd is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_free(run_dir: str, why: str = "two processes writing one run would corrupt it") -> None:
    """Refuse (RunLocked, with the holder's pid) when another process holds the run's lock; changes nothing and
    makes no file. For the early checks, before a model loads; the lock itself is taken later (RunLock)."""
    path = lock_path(run_dir)
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise _refusal(run_dir, why) from None
        raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def hold_run_lock(run_dir: str, why: str = "two processes writing one run would corrupt it") -> Iterator[RunLock]:
    """`with hold_run_lock(out): ...` holds the run's lock for the block (for gvu pretrain)."""
    lock = RunLock(run_dir, why).acquire()
    try:
        yield lock
    finally:
        lock.release()


def clear_run_dir(run_dir: str, lock: RunLock) -> None:
    """Delete everything in a run folder except its lock, which `lock` must hold (--overwrite replacing a run: the
    folder stays, so the lock on it is never let go in between)."""
    import shutil

    if not lock.held or os.path.realpath(lock.run_dir) != os.path.realpath(run_dir):
        raise RuntimeError(f"clear_run_dir({run_dir!r}) without holding its lock")
    for name in entries(run_dir):
        path = os.path.join(run_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
