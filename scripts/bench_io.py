#!/usr/bin/env python
"""Loading speed: medae against SimpleITK on the same files, in one run.

    python scripts/bench_io.py [--data ../shared/data] [--repeat 5]

Prints, per input, the best-of-N wall time, MB/s (file bytes on disk per second) for medae and
for SimpleITK, and the ratio medae / SimpleITK (above 1: medae is faster), then a markdown table
to paste into docs/benchmarks.md.  Both libraries return a float32 array of physical values
(medae also reorients to RAS+), so they do the same work.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

import medae

ROOT = Path(__file__).resolve().parents[1]


def _files_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _sitk_read(path: Path) -> np.ndarray:
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
        img = reader.Execute()
    else:
        img = sitk.ReadImage(str(path))
    return sitk.GetArrayViewFromImage(sitk.Cast(img, sitk.sitkFloat32)).copy()


def _nibabel_read(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.as_closest_canonical(nib.load(path)).get_fdata(dtype=np.float32))


def _medae_read(path: Path) -> np.ndarray:
    return medae.load_scan(path).array


def _best(fn, path: Path, repeat: int) -> float:
    fn(path)  # warm the page cache and imports
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(path)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path,
                    default=Path(os.environ.get("MEDAE_DATA", ROOT.parent / "shared" / "data")))
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(os.cpu_count() or 1)
    d = args.data
    inputs = [
        ("NIfTI .nii.gz float32 240x240x155",
         d / "brain/brats2013/pat0001/Flair_subtrMeanDivStd.nii.gz"),
        ("NIfTI .nii.gz uint8 mask 240x240x155", d / "brain/brats2013/pat0001/brainmask.nii.gz"),
        ("NIfTI .nii.gz 182x218x182 (MS FLAIR)",
         next((d / "brain/ms_lesjak/patient07").glob("FLAIR*.nii.gz"), None)),
        ("DICOM GE MP-RAGE, 130 files", d / "dicom/ge_mprage_t1/In/05_3D_Ax_T1_MP_RAGE_R22"),
        ("DICOM CT, 17 files", d / "dicom/ct_17_slices/tests/image_data/dicom"),
    ]
    rows = []
    for name, path in inputs:
        if path is None or not path.exists():
            print(f"skip {name}: {path} not found")
            continue
        size = _files_bytes(path)
        a, b = _medae_read(path), _sitk_read(path)
        assert a.size == b.size, (name, a.shape, b.shape)
        t_m = _best(_medae_read, path, args.repeat)
        t_s = _best(_sitk_read, path, args.repeat)
        t_n = None if path.is_dir() else _best(_nibabel_read, path, args.repeat)
        mb = size / 1e6
        rows.append((name, mb, t_m, mb / t_m, t_s, mb / t_s, t_s / t_m, t_n))
        print(f"{name}: medae {t_m * 1e3:.1f} ms ({mb / t_m:.0f} MB/s), SimpleITK "
              f"{t_s * 1e3:.1f} ms ({mb / t_s:.0f} MB/s), ratio {t_s / t_m:.2f}", flush=True)
    print()
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, medae {medae.__version__}, "
          f"SimpleITK {sitk.Version_VersionString()}, "
          f"{datetime.date.today().isoformat()}; best of {args.repeat} warm reads.")
    print()
    print("| input | MB on disk | medae ms | medae MB/s | SimpleITK ms | SimpleITK MB/s "
          "| ratio (SimpleITK time / medae time) | nibabel ms (for reference) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, mb, t_m, r_m, t_s, r_s, ratio, t_n in rows:
        nib_ms = "n/a" if t_n is None else f"{t_n * 1e3:.1f}"
        print(f"| {name} | {mb:.1f} | {t_m * 1e3:.1f} | {r_m:.0f} | {t_s * 1e3:.1f} | {r_s:.0f} "
              f"| {ratio:.2f} | {nib_ms} |")


if __name__ == "__main__":
    main()
