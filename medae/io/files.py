"""Opening input files safely: only regular files are read, and reads are bounded.

A named pipe blocks a reader forever and a device (``/dev/zero``, ``/dev/urandom``) never ends,
so every input file is opened without blocking, checked with ``fstat`` to be a regular file (a
symlink to one is fine), and only then read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from medae.errors import ScanReadError

NOT_REGULAR = "not a regular file (a named pipe, device or socket): not read"


def is_regular(path: str | os.PathLike) -> bool:
    """The path (after symlinks) is a regular file; False for pipes, devices, folders, dangling
    links."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open ``path`` for binary reading, refusing anything but a regular file (never blocks).

    Raises:
        ScanReadError: not a regular file.
        OSError: it cannot be opened (missing, permissions, ...).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ScanReadError(path, "is a folder, not a file: not read")
        if not stat.S_ISREG(mode):
            raise ScanReadError(path, NOT_REGULAR)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike, limit: int | None = None) -> bytes:
    """The bytes of a regular file; with ``limit``, a file larger than that is refused."""
    with open_regular(path) as f:
        if limit is None:
            return f.read()
        # never a buffer of ``limit`` bytes up front: the file's size (+1 to see it grow)
        data = f.read(min(limit, os.fstat(f.fileno()).st_size) + 1)
        while len(data) <= limit:  # it grew while read: the rest, in bounded pieces
            more = f.read(min(1 << 20, limit + 1 - len(data)))
            if not more:
                break
            data += more
    if len(data) > limit:
        raise ScanReadError(path, f"larger than {limit} bytes: not read")
    return data


def walk_files(root: str | os.PathLike, skip_dir: Callable[[Path], bool] | None = None
               ) -> tuple[list[Path], list[str]]:
    """The files under the folder ``root``, recursively, in sorted order, and one note per entry
    that is not a regular file (a pipe, device or socket: listed, never opened, so never read).

    Hidden entries (names starting with a dot) are skipped, and so are folders for which
    ``skip_dir`` is true.  A dangling link stays in the list: reading it fails with a reason.
    """
    out, notes = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and not (skip_dir is not None and skip_dir(here / d)))
        for name in sorted(filenames):
            path = here / name
            if name.startswith("."):
                continue
            if not is_regular(path) and os.path.exists(path):
                notes.append(f"{path}: skipped, {NOT_REGULAR}")
                continue
            out.append(path)
    return out, notes
