"""Headers parsed once per process: per-file records and whole listings, keyed by file status.

A folder's headers are read once; a later :func:`~medae.io.dicom.find_dicom_series` over the
same files (``discover`` then ``load_scan(folder, series=KEY)``, or one volume after another of
a multi-volume folder) only checks each file's status (``os.stat``: device, inode, size,
modification and change times) and reuses what was parsed.  A file that changed, appeared or
went away is read again; nothing else is.  File times are only as fine as the kernel's clock
tick, so a file rewritten in place with the same size within one tick would look unchanged:
as git does for its index, a file modified less than :data:`RACY_SECONDS` ago is never cached.

Entries hold derived values only (frame records, sanitized series facts, notes), never pydicom
data sets or pixel data, and the cache is bounded by the number of frames it holds (least
recently used entries go first).
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

#: at most this many frame records are kept (a frame record is well under 1 kB)
MAX_FRAMES = 100_000
#: and at most this many whole listings (series lists of one call each)
MAX_LISTINGS = 16

#: files modified this recently are read every time
RACY_SECONDS = 2.0

Signature = tuple[int, int, int, int, int]


def signature(path: Path, now: float | None = None) -> Signature | None:
    """What identifies a version of a file; None (never cached) when it cannot be stat'ed or
    was modified less than :data:`RACY_SECONDS` before ``now`` (default: the current time).
    The change time is part of the signature (a file whose times were reset is read again)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    now = time.time() if now is None else now
    if now - st.st_mtime < RACY_SECONDS:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class HeaderCache:
    """Per-file records and per-listing results, least recently used first out."""

    def __init__(self, max_frames: int = MAX_FRAMES, max_listings: int = MAX_LISTINGS):
        self.max_frames = max_frames
        self.max_listings = max_listings
        self._files: OrderedDict[str, tuple[Signature, Any, int]] = OrderedDict()
        self._listings: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()
        self._frames = 0
        self._listing_frames = 0
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._files.clear()
            self._listings.clear()
            self._frames = self._listing_frames = 0

    def record(self, path: Path, sig: Signature | None) -> Any:
        if sig is None:
            return None
        with self._lock:
            entry = self._files.get(str(path))
            if entry is None or entry[0] != sig:
                return None
            self._files.move_to_end(str(path))
            return entry[1]

    def store(self, path: Path, sig: Signature | None, record: Any, n_frames: int) -> None:
        if sig is None or n_frames > self.max_frames:
            return
        with self._lock:
            old = self._files.pop(str(path), None)
            if old is not None:
                self._frames -= old[2]
            self._files[str(path)] = (sig, record, n_frames)
            self._frames += n_frames
            while self._frames > self.max_frames or len(self._files) > 8 * self.max_frames:
                _, (_, _, n) = self._files.popitem(last=False)
                self._frames -= n

    def listing(self, key: tuple | None) -> Any:
        if key is None:
            return None
        with self._lock:
            entry = self._listings.get(key)
            if entry is None:
                return None
            self._listings.move_to_end(key)
            return entry[0]

    def store_listing(self, key: tuple | None, value: Any, n_frames: int) -> None:
        if key is None or n_frames > self.max_frames:
            return
        with self._lock:
            old = self._listings.pop(key, None)
            if old is not None:
                self._listing_frames -= old[1]
            self._listings[key] = (value, n_frames)
            self._listing_frames += n_frames
            while (len(self._listings) > self.max_listings
                   or self._listing_frames > self.max_frames):
                _, (_, n) = self._listings.popitem(last=False)
                self._listing_frames -= n


#: the process-wide cache used by find_dicom_series
HEADERS = HeaderCache()


def clear_header_cache() -> None:
    """Forget every parsed header (the next listing of any folder reads its files again)."""
    HEADERS.clear()
