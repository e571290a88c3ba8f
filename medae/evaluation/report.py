"""Write ``metrics.json``, ``report.md`` and plots for ``medae evaluate``."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medae.io.atomic import atomic_write_bytes


def _clean(value):
    """JSON-safe: non-finite floats become None, numpy scalars plain Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _fmt(v, digits=3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())


def _plots(m: dict, out: Path) -> list[str]:
    c, v = m["curve"], m["voxel"]
    names = []
    if c["recall"]:
        fig = Figure(figsize=(5.5, 4.5))
        ax = fig.add_subplot()
        ax.plot(c["recall"], c["precision"], color="C0")
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
               title=f"Voxel precision-recall (AP {_fmt(v['average_precision'])})")
        ax.grid(alpha=0.3)
        _save(fig, out / "pr_curve.png")
        fig = Figure(figsize=(5.5, 4.5))
        ax = fig.add_subplot()
        thr = np.array(c["threshold"], float)
        ok = np.isfinite(thr)
        ax.plot(thr[ok], np.array(c["dice"])[ok], color="C1")
        if v["threshold"] is not None:
            ax.axvline(v["threshold"], color="C2", ls="--",
                       label=f"calibrated threshold (Dice {_fmt(v['dice_at_threshold'])})")
        ax.axvline(v["best_dice_threshold"], color="C3", ls=":",
                   label=f"[Dice] upper bound {_fmt(v['best_dice'])}")
        ax.set(xlabel="threshold (anomaly score)", ylabel="pooled Dice", ylim=(0, 1),
               title="Dice against threshold")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        _save(fig, out / "dice_threshold.png")
        names += ["pr_curve.png", "dice_threshold.png"]
    froc = m.get("froc") or {}
    if froc.get("lesions"):
        fig = Figure(figsize=(5.5, 4.5))
        ax = fig.add_subplot()
        ax.plot(froc["fp_per_scan"], froc["recall"], marker=".", color="C0")
        les = m["lesions"]
        if les["recall"] is not None:
            ax.plot([les["fp_per_scan"]], [les["recall"]], "o", color="C2",
                    label="calibrated operating point")
            ax.legend(fontsize=8)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set(xlabel="false-positive candidates per scan", ylabel="lesion-wise recall",
               ylim=(0, 1.02), title=f"FROC ({froc['lesions']} lesions, {froc['scans']} scans)")
        ax.grid(alpha=0.3)
        _save(fig, out / "froc.png")
        names.append("froc.png")
    per = m["per_scan"]
    fig = Figure(figsize=(max(5.0, 0.5 * len(per) + 2), 4.0))
    ax = fig.add_subplot()
    x = np.arange(len(per))
    ax.bar(x - 0.2, [p["ap"] or 0 for p in per], 0.4, label="voxel AP")
    ax.bar(x + 0.2, [p.get("dice_at_threshold") or 0 for p in per], 0.4,
           label="Dice @ calibrated threshold")
    ax.set_xticks(x, [p["case_id"] for p in per], rotation=45, ha="right", fontsize=8)
    ax.set(ylim=(0, 1), title="Per scan")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out / "per_scan.png")
    return [*names, "per_scan.png"]


def write_report(metrics: dict, output: str | os.PathLike, predictions: str, labels: str) -> Path:
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    metrics = _clean(metrics)
    text = json.dumps(metrics, indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(out / "metrics.json", text.encode())
    plots = _plots(metrics, out)
    v, les, sl = metrics["voxel"], metrics["lesions"], metrics["scan_level"]
    lines = [
        "# medae evaluation", "",
        f"Predictions: `{predictions}`; labels: `{labels}`; {metrics['n_scans']} scan(s), "
        f"{v['voxels']} brain voxels of which {v['lesion_voxels']} lesion.", "",
        "| metric | value |", "|---|---|",
        f"| voxel AP (AUPRC, pooled) | {_fmt(v['average_precision'])} |",
        f"| voxel AUROC | {_fmt(v['auroc'])} |",
        f"| [Dice] (best over thresholds: an upper bound, chosen with the test labels) "
        f"| {_fmt(v['best_dice'])} |",
        f"| Dice at the calibrated threshold (pooled) | {_fmt(v['dice_at_threshold'])} |",
        f"| Dice at the calibrated threshold (per scan, mean ± sd) | "
        f"{_fmt(v['dice_per_scan_mean'])} ± {_fmt(v['dice_per_scan_sd'])} |",
        f"| lesion recall (26-connected, any overlap) | {_fmt(les['recall'])} |",
        f"| false-positive candidates per scan | {_fmt(les['fp_per_scan'], 1)} ± "
        f"{_fmt(les['fp_per_scan_sd'], 1)} |",
        f"| scan-level AUROC / AP | {_fmt(sl['auroc'])} / {_fmt(sl['ap'])} |", "",
        f"Threshold: {_fmt(v['threshold'], 4)} ({v['threshold_rule']}).", "",
    ]
    if sl.get("reason"):
        lines += [f"Scan level: {sl['reason']}.", ""]
    lines += ["Lesion detection by size:", "", "| lesion size | lesions | detected | recall |",
              "|---|---|---|---|"]
    for name, b in les["detail"]["by_size"].items():
        lines.append(f"| {name} | {b['lesions']} | {b['detected']} | {_fmt(b['recall'])} |")
    froc = metrics.get("froc") or {}
    if froc.get("lesions"):
        lines += ["", "FROC (lesion-wise recall at thresholds over the brain voxels' scores):", "",
                  "| threshold | FP candidates / scan | lesion recall |", "|---|---|---|"]
        for t, f, r in zip(froc["thresholds"], froc["fp_per_scan"], froc["recall"],
                           strict=True):
            lines.append(f"| {t:.4g} | {f:.2f} | {_fmt(r)} |")
    lines += ["", "| case | lesion voxels | AP | Dice @ threshold | lesions found "
              "| FP candidates |", "|---|---|---|---|---|---|"]
    for p in metrics["per_scan"]:
        lines.append(f"| {p['case_id']} | {p['lesion_voxels']} | {_fmt(p['ap'])} | "
                     f"{_fmt(p.get('dice_at_threshold'))} | {p['detected']}/{p['lesions']} | "
                     f"{p['fp_candidates']} |")
    lines += [""] + [f"![{name}]({name})" for name in plots] + [""]
    atomic_write_bytes(out / "report.md", "\n".join(lines).encode())
    return out
