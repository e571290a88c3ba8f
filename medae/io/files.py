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
    that is not read: a pipe, device or socket (listed, never opened), a link to a folder (not
    followed: it could lead out of the tree or into a loop), a folder that cannot be listed.

    Hidden entries (names starting with a dot) are skipped, and so are folders for which
    ``skip_dir`` is true.  A dangling link stays in the list: reading it fails with a reason.
    The walk keeps its own stack, so a tree of any depth is walked (no recursion limit).
    """
    out, notes = [], []
    stack = [Path(root)]
    while stack:
        here = stack.pop()
        try:
            with os.scandir(here) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            notes.append(f"{_shown(here)}: skipped, cannot be listed "
                         f"({exc.strerror or type(exc).__name__})")
            continue
        folders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = here / entry.name
            try:
                is_dir = entry.is_dir()
                is_link = entry.is_symlink()
            except OSError:
                is_dir = is_link = False
            if is_dir and is_link:
                notes.append(f"{_shown(path)}: skipped, a link to a folder (not followed; "
                             "give the folder itself)")
            elif is_dir:
                if skip_dir is None or not skip_dir(path):
                    folders.append(path)
            elif not is_regular(path) and os.path.exists(path):
                notes.append(f"{_shown(path)}: skipped, {NOT_REGULAR}")
            else:
                out.append(path)
        stack.extend(reversed(folders))
    return out, notes


def _shown(path: Path) -> str:
    """A path for a note: cut in the middle when it is very long (a tree thousands deep)."""
    text = str(path)
    return text if len(text) <= 400 else f"{text[:200]}...{text[-180:]}"
