#!/usr/bin/env python
"""Every benchmark in one go; writes docs/benchmarks.md.

    python scripts/bench.py            # full (longer: more repeats, steps, scans)
    python scripts/bench.py --quick    # under 5 minutes on 2 CPU cores
    python scripts/bench.py --device cuda   # training/scoring rows on the GPU

Runs scripts/bench_io.py (loading: medae vs SimpleITK), bench_train.py (training throughput per
precision), bench_score.py (seconds per BraTS-size scan, scans/s, peak memory), bench_metrics.py
(medae vs scikit-learn) and bench_memory.py (peak memory scoring a 512x512x600 CT-size volume),
each printing its own machine line and table, and assembles them with the commands that produced
them.  Ratios against a peer are measured within one script run.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SECTIONS = [
    ("Loading (medae vs SimpleITK)", "bench_io.py", ["--repeat", "5"], ["--repeat", "2"],
     "Both return a float32 array of physical values (medae also reorients to RAS+); MB/s "
     "counts file bytes on disk.  Target: at least as fast as SimpleITK on every input (ratio "
     "at least 1), and `load_scan(folder, series=KEY)` on a large multi-volume folder within 2x "
     "of loading that volume's files alone.  Every timed medae DICOM read starts with the "
     "process's header cache cleared (all headers parsed, as SimpleITK does) except the "
     "'headers cached' column and the multi-volume folder row.  The `.nii.gz` lead comes from "
     "reading the file in one go and inflating it with ISA-L a block of slices at a time while "
     "a second thread scales and casts the block before into the canonical array (no "
     "reorientation copy); the DICOM lead from parsing each header once, in memory, with "
     "integer tag filters and raw-byte values (the file meta group read without pydicom's "
     "checking pass, an enhanced header pruned to the functional groups read), and reading "
     "uncompressed pixels (12-bit included) straight into the canonical array.  Each time is "
     "the best of at least the given reads and half a second of them, taken in three rounds that "
     "alternate medae and SimpleITK (a slow stretch of the machine then cannot fall on one "
     "library only)."),
    ("Training throughput", "bench_train.py", ["--steps", "20"], ["--steps", "6", "--warmup", "2"],
     "The real training step (autocast, loss, backward, clipping, AdamW) on batches from the "
     "real cached dataset and loader.  'data %' is the time spent waiting for the next batch.  On "
     "a CPU, fp16 is far slower (no fp16 kernels; it is for GPUs) and bf16 pays only where the "
     "CPU has bf16 instructions (this one: see 'vs fp32').  The loss columns agree across "
     "precisions (same seed, batches)."),
    ("Training options on this device", "bench_train.py",
     ["--recipes", "brain_flair", "--precisions", "32", "bf16", "--variants", "default",
      "channels-last", "compile", "threads-1", "--steps", "20"],
     ["--recipes", "brain_flair", "--precisions", "32", "bf16", "--variants", "default",
      "channels-last", "compile", "threads-1", "--steps", "6", "--warmup", "2"],
     "The recommended recipe's training step as above, in what else might pay: channels-last "
     "memory format, `torch.compile` (its compile time is the warm-up column, paid once per "
     "run) and one intra-op thread, each in fp32 and bf16, against the step as trained today "
     "('vs fp32' is against fp32 'default')."),
    ("Scoring", "bench_score.py", ["--copies", "2", "--serial"], ["--copies", "1", "--serial"],
     "The real batch job (`medae score` internals: load, preprocess, reconstruct every slice, "
     "heat map, candidates, NIfTI/CSV/PNG outputs) on the BraTS FLAIR scans with the default "
     "`ae2d` architecture.  Target on 2 CPU cores: under 5 s per scan, I/O included."),
    ("Metrics (medae vs scikit-learn)", "bench_metrics.py", ["--huge"], ["--voxels", "5e6"],
     "Pooled voxel AP + AUROC on the same synthetic voxels, each in its own process."),
    ("Peak memory on a CT-size volume", "bench_memory.py", ["--also", "300"], ["--also", "300"],
     "Scoring one 512x512x600 volume on the CPU with the default 2D model (and a 512x512x300 "
     "one, for the growth per voxel).  Target: under 2 GB.  Volumes over 32 M voxels whose "
     "values are whole numbers are held in 16 bits while scored (`Scan.compact`), and the brain "
     "mask's Otsu smoothing runs in slabs; the heat map (float32), the candidate labels and "
     "the masks are still whole arrays, so the peak grows with the volume."),
]
DEVICE_SCRIPTS = {"bench_train.py", "bench_score.py"}


def main() -> None:
    from benchmark_brain import commit_of  # (scripts/ is on the path: this is run as a script)

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    t0 = time.time()
    parts = ["# Benchmarks", "",
             f"Written by `python scripts/bench.py{' --quick' if args.quick else ''}"
             f"{'' if args.device == 'auto' else ' --device ' + args.device}` at commit "
             f"{commit_of(['docs/benchmarks.md'])} on {datetime.date.today().isoformat()} "
             f"({platform.machine()}, Python {platform.python_version()}).  Each section gives "
             "the command that produced it and the machine it ran on.", ""]
    for title, script, full, quick, note in SECTIONS:
        path = ROOT / "scripts" / script
        if not path.exists():
            continue
        extra = quick if args.quick else full
        if script in DEVICE_SCRIPTS:
            extra = [*extra, "--device", args.device]
        cmd = [sys.executable, str(path), *extra]
        print(f"running {script} ...", flush=True)
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        shown = " ".join(["python", f"scripts/{script}", *extra])
        parts += [f"## {title}", "", f"`{shown}`", "", note, ""]
        if res.returncode != 0:
            err = (res.stderr.strip().splitlines() or ["?"])[-1]
            parts += [f"Failed: {err}", ""]
            continue
        parts += ["```" if "|" not in res.stdout else "", res.stdout.strip(),
                  "```" if "|" not in res.stdout else "", ""]
    parts += ["## GPU", "",
              "Not measured yet: no GPU was available to the sessions that wrote this file.  "
              "Run `python scripts/bench.py --device cuda` on one to add the mixed-precision "
              "training and scoring rows.", ""]
    args.output.write_text("\n".join(parts))
    print(f"wrote {args.output} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
