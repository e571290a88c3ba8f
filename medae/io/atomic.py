"""Write files so that a reader never sees a partial one: temporary name, fsync, rename."""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from medae.errors import MedaeError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: permissions for new files and folders (mkstemp/mkdtemp make them private otherwise)
FILE_MODE = 0o666 & ~_umask()
DIR_MODE = 0o777 & ~_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically (same-folder temporary file, then ``os.replace``)."""
    with atomic_open(path) as f:
        f.write(data)
    return Path(path)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through, atomically: what is written goes to a
    same-folder temporary file, synced and renamed into place when the block ends (removed if
    it raises), so large outputs can be streamed without holding them in memory."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # a read-only folder, a name too long, ...
        raise MedaeError(path, f"cannot write: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), FILE_MODE)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if exc.errno == errno.ENOSPC:
            raise MedaeError(path, "no space left on device; nothing was written") from exc
        raise MedaeError(path, f"cannot write: {exc.strerror or exc}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_csv(path: str | os.PathLike, columns: Sequence[str],
                     rows: Iterable[Mapping[str, Any] | Sequence[Any]]) -> Path:
    """Write a CSV table atomically: the header ``columns``, then one line per row.

    A row is a mapping by column name (keys not in ``columns`` are left out, missing ones and
    ``None`` are empty) or a sequence in column order.  Values are quoted by the ``csv`` module
    where they need it (a comma, a quote or a line break); lines end with ``\\n``; text that a
    spreadsheet would run as a formula or show reordered is escaped (:func:`safe_cell`).
    """
    columns = list(columns)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([safe_cell(c) for c in columns])
    for row in rows:
        cells = [row.get(c, "") for c in columns] if isinstance(row, Mapping) else row
        w.writerow([safe_cell(v) for v in cells])
    return atomic_write_bytes(path, buf.getvalue().encode())


#: a spreadsheet reads a cell starting with one of these as a formula
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: characters that reorder or hide text on screen (bidirectional controls): written as \uXXXX
_BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def safe_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: a string starting like a formula (``=``, ``+``,
    ``-``, ``@``; not a plain number such as ``-0.5``) gets a leading ``'``, and bidirectional
    control characters (U+202E ...) are written as ``\\u202e``.  Numbers are kept as they are."""
    if not isinstance(value, str):
        return value
    value = _BIDI.sub(lambda m: f"\\u{ord(m.group()):04x}", value)
    if value.startswith(_FORMULA_START):
        try:
            float(value)
        except ValueError:
            return "'" + value
    return value
