"""Datasets as researchers keep them: BIDS, BraTS, the Medical Segmentation Decathlon and
nnU-Net v2 raw datasets, recognised from their own files, without a manifest.

Each layout names its sequences its own way; here they all become the names recipes use
(:data:`SEQUENCE_ORDER`: ``flair``, ``t1``, ``t1c``, ``t2``, ``pd``, ...), in that order (the
first fixes the case's grid).  A file whose name or channel is not one of them is skipped with a
note, never guessed.  The segmentation a layout carries is the case's label, never a scan.

- **BIDS** (``dataset_description.json``): a case is a subject, or a subject's session
  (``sub-01_ses-02``); the scans are ``sub-*/[ses-*/]anat/*.nii[.gz]`` by suffix (``FLAIR``,
  ``T1w``, ``T1w`` with a ``ce-`` entity, ``T2w``, ``PDw``, ``T2starw``).  ``derivatives/``,
  ``sourcedata/``, ``code/`` and every other folder are not scanned.  Entity filters
  (:func:`parse_bids_filters`) pick among a sequence's scans; two scans left for one sequence of
  a case (two runs) fail that case in one line naming them, never a guess.  Labels
  (``desc-lesion`` ``_mask`` or ``_dseg``) and brain masks (``desc-brain_mask``) come from a
  derivatives dataset the user names.
- **BraTS** (every edition): case folders holding ``<folder>_flair/_t1/_t1ce/_t2/_seg`` files
  (2018-2021) or ``<folder>-t2f/-t1n/-t1c/-t2w/-seg`` (2023 on).
- **Decathlon** (``dataset.json`` with ``modality``) and **nnU-Net v2** (``dataset.json`` with
  ``channel_names`` and ``file_ending``): ``imagesTr/``, ``imagesTs/`` and ``labelsTr/``; a
  Decathlon image holds its channels as the volumes of one 4D file, each read on its own.

This package only looks at names and headers and returns :class:`Layout` values; ``discover``
turns them into scan sources.
"""

from __future__ import annotations

from pathlib import Path

from medae.io.layouts.bids import BIDS_SUFFIXES, bids_layout, parse_bids_filters
from medae.io.layouts.brats import BRATS_NAMES, brats_layout
from medae.io.layouts.common import (
    SEQUENCE_ORDER,
    Layout,
    LayoutCase,
    LayoutOptions,
    Volume,
)
from medae.io.layouts.decathlon import CHANNEL_NAMES, decathlon_layout


def find_layout(root: Path, options: LayoutOptions | None = None) -> Layout | None:
    """The BIDS, Decathlon or nnU-Net v2 dataset whose root is ``root``, from its marker file
    (None when there is none); a malformed marker file is one line naming it."""
    options = options or LayoutOptions()
    if not root.is_dir():
        return None
    if (root / "dataset_description.json").exists():
        return bids_layout(root, options)
    if (root / "dataset.json").exists() and any(
            (root / d).is_dir() for d in ("imagesTr", "imagesTs")):
        return decathlon_layout(root)
    return None



__all__ = ["BIDS_SUFFIXES", "BRATS_NAMES", "CHANNEL_NAMES", "SEQUENCE_ORDER", "Layout",
           "LayoutCase", "LayoutOptions", "Volume", "brats_layout", "find_layout",
           "parse_bids_filters"]
