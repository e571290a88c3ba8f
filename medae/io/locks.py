"""Advisory locks on a lock file in a shared folder (jobs that write into one output folder).

``flock`` locks belong to an open file and end with the process that holds them (a killed job
included), so a lock tells whether its owner still lives.  A lock file may be removed by the
last holder: whoever locks a path checks afterwards that the path still names the file it
locked, and opens it again when not.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from medae.errors import MedaeError

#: errors of file systems without working locks (some network mounts): the caller decides
UNSUPPORTED = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF)


class LockUnsupported(Exception):
    """The file system holding the lock file does not lock."""


def lock(path: str | os.PathLike, *, exclusive: bool, wait: bool) -> int | None:
    """A file descriptor holding a shared or exclusive lock on ``path`` (created if missing);
    None when ``wait`` is false and another holder is in the way.

    Raises:
        LockUnsupported: the file system does not lock.
        MedaeError: the lock file cannot be created (a read-only folder, ...).
    """
    path = Path(path)
    mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as exc:
            raise MedaeError(path, f"cannot create a lock file: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as exc:
            os.close(fd)
            if exc.errno in UNSUPPORTED:
                raise LockUnsupported(str(exc)) from None
            raise MedaeError(path, f"cannot lock: {exc.strerror or exc}") from None
        try:  # removed (by its last holder) while we waited: lock the new file instead
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def release(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def share(fd: int) -> None:
    """Turn the exclusive lock held through ``fd`` into a shared one (waits for nobody: no one
    else holds it)."""
    fcntl.flock(fd, fcntl.LOCK_SH)
