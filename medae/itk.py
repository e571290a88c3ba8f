"""SimpleITK for the raw-head steps (N4 in :mod:`medae.bias`, registration in
:mod:`medae.register`): imported on first use, refused in one line when it is missing, and used
by one step at a time in a process.

SimpleITK's thread count is process-wide, and results depend on it: ITK's threads sum their
parts of a metric or a fit in an order that varies, so a registration is the same to the last
bit only on one thread, and N4 gives other low bits on one thread than on two (up to 1.2e-4
on the raw T1_head_ext2, whose values run from 0 to 255).  A registration sets one thread for
its run; :func:`exclusive` keeps every other SimpleITK step of medae (N4 in another prefetch
worker) waiting meanwhile, so no step ever runs on a thread count it did not choose.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from medae.errors import MedaeError

_ONE_AT_A_TIME = threading.Lock()


def simpleitk(what: str) -> Any:
    """The SimpleITK module; a one-line :class:`MedaeError` saying that ``what`` (a recipe
    setting) needs it when it is not installed."""
    try:
        import SimpleITK as sitk
    except ImportError:
        raise MedaeError(f"{what} needs SimpleITK, which is not installed: `make install`, or "
                         "`pip install SimpleITK`") from None
    return sitk


@contextmanager
def exclusive(what: str, threads: int | None = None) -> Iterator[Any]:
    """SimpleITK for one step alone in this process (medae's other SimpleITK steps wait), on
    ``threads`` threads (None: the process's setting), restored afterwards."""
    sitk = simpleitk(what)
    with _ONE_AT_A_TIME:
        saved = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        if threads is not None:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        try:
            yield sitk
        finally:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(saved)
