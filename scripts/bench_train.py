#!/usr/bin/env python
"""Training throughput: samples/s and peak memory for the default 2D and 3D recipes and the
recommended brain recipes, per precision.

    python scripts/bench_train.py [--device auto] [--steps 20]
                                  [--recipes ae2d ae3d brain_flair brain_multi]
                                  [--precisions 32 bf16 fp16]
                                  [--variants default channels-last compile threads-1]

Each (recipe, precision) runs in its own process (clean peak-memory figures) with the real
training step (:func:`medae.train.train_step`: autocast, loss, backward, clipping, AdamW) on
batches drawn by the real dataset/loader from cached volumes of the recipe's size.  It reports
step throughput, data-loading time as a share of the step, peak memory (GPU: max allocated;
CPU: peak RSS), and the final loss (so precisions can be compared).  Prints a markdown table.

``--variants`` adds rows for what else might pay on a CPU, each against the same recipe and
precision as trained today ("default": contiguous tensors, eager mode, torch's thread count):
"channels-last" (the model's and the batches' memory format), "compile" (``torch.compile`` of
the model; its compile time is the warm-up and is reported apart) and "threads-1" (one intra-op
thread, the setting for several training processes on one machine).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _one(recipe: str, precision: str, device: str, steps: int, warmup: int,
         variant: str = "default") -> dict:
    import numpy as np
    import torch

    if variant == "threads-1":
        torch.set_num_threads(1)

    from medae.bundle import model_kwargs
    from medae.config import load_config
    from medae.models import create_model
    from medae.preprocess import Prepared, PreprocessConfig
    from medae.samples import SampleDataset
    from medae.train import Dist, make_loader, resolve_device, train_step

    dev = resolve_device(device)
    cfg = load_config(ROOT / "configs" / f"{recipe}.yaml", [f"train.precision={precision}"])
    torch.manual_seed(0)
    pre = PreprocessConfig.from_dict(cfg["preprocess"])
    size = tuple(s or 64 for s in pre.size)  # an axis the recipe keeps: 64 slices
    rng = np.random.default_rng(0)
    items = []
    for i in range(4):  # cached volumes of the recipe's size (content does not change speed)
        img = rng.random((pre.channels, *size), dtype=np.float32)
        items.append({"case_id": f"c{i}", "prepared": Prepared(
            image=img, mask=np.ones(size, bool), scan_shape=size, resampled_shape=size,
            offset=(0, 0, 0))})
    kwargs = model_kwargs(cfg)
    ds = SampleDataset(items, int(kwargs["spatial_dims"]), patch_size=cfg["data"]["patch_size"],
                       min_foreground=0.0)
    model = create_model(**kwargs).to(dev)
    layout = (torch.channels_last if kwargs["spatial_dims"] == 2 else torch.channels_last_3d)
    channels_last = dev.type == "cuda" or variant == "channels-last"
    if channels_last:
        model = model.to(memory_format=layout)
    run = torch.compile(model) if variant == "compile" else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    bs = int(cfg["train"]["batch_size"])
    noise = getattr(model, "noise", None)
    noise = noise.to_dict() if noise is not None else None

    def batches():
        epoch = 0
        while True:
            loader = make_loader(ds, bs, True, epoch, 0, Dist(), 0,
                             dev.type == "cuda")
            yield from loader
            epoch += 1

    it = batches()
    t_data = t_step = t_warm = 0.0
    losses = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        batch = next(it)
        if channels_last:
            batch["image"] = batch["image"].contiguous(memory_format=layout)
        t1 = time.perf_counter()
        parts = train_step(run, model, batch, opt=opt, scaler=scaler, sched=sched, device=dev,
                           precision=precision, noise=noise, noise_seed=i,
                           loss_args={"kind": "mse", "beta": 1e-4, "sparsity": 1e-3},
                           masked=False, grad_clip=1.0)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if i < warmup:
            t_warm += t2 - t1
        if i == warmup - 1 and dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        if i >= warmup:
            t_data += t1 - t0
            t_step += t2 - t1
            losses.append(parts["total"])
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
        name = torch.cuda.get_device_name()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        name = f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    return {"recipe": recipe, "precision": precision, "variant": variant, "device": name,
            "warmup_s": t_warm, "batch": bs,
            "input": list(batch["image"].shape[2:]), "samples_per_s": steps * bs / t_step,
            "data_share": t_data / (t_data + t_step), "peak_mib": peak,
            "final_loss": float(np.mean(losses[-5:]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--recipes", nargs="+", default=["ae2d", "ae3d", "brain_flair", "brain_multi"])
    ap.add_argument("--precisions", nargs="+", default=["32", "bf16", "fp16"])
    ap.add_argument("--variants", nargs="+", default=["default"],
                    choices=["default", "channels-last", "compile", "threads-1"])
    ap.add_argument("--one", nargs=3, metavar=("RECIPE", "PRECISION", "VARIANT"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        recipe, precision, variant = args.one
        print(json.dumps(_one(recipe, precision, args.device, args.steps, args.warmup, variant)))
        return
    rows = []
    runs = [(r, p, v) for r in args.recipes for p in args.precisions for v in args.variants]
    for recipe, precision, variant in runs:
        cmd = [sys.executable, __file__, "--one", recipe, precision, variant,
               "--device", args.device, "--steps", str(args.steps),
               "--warmup", str(args.warmup)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            err = (res.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{recipe} {precision} {variant}: failed: {err}", flush=True)
            continue
        row = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{recipe} {precision} {variant}: {row['samples_per_s']:.1f} samples/s, data "
              f"{100 * row['data_share']:.1f}% of step, peak {row['peak_mib']:.0f} MiB, "
              f"loss {row['final_loss']:.4f}", flush=True)
    if not rows:
        return
    base = {r["recipe"]: r["samples_per_s"] for r in rows
            if r["precision"] == "32" and r["variant"] == "default"}
    variants = len(args.variants) > 1
    print()
    print(f"Device: {rows[0]['device']}; {datetime.date.today().isoformat()}; "
          f"{platform.machine()}, Python {platform.python_version()}; {args.steps} timed steps "
          f"after {args.warmup} warm-up.")
    print()
    extra = " variant | warm-up s |" if variants else ""
    print(f"| recipe | input | batch | precision |{extra} samples/s | vs fp32 | data % of step | "
          "peak MiB | loss |")
    print("|---|---|---|---|" + "---|---|" * variants + "---|---|---|---|---|")
    for r in rows:
        ratio = r["samples_per_s"] / base[r["recipe"]] if r["recipe"] in base else float("nan")
        cols = f" {r['variant']} | {r['warmup_s']:.1f} |" if variants else ""
        print(f"| {r['recipe']} | {'x'.join(map(str, r['input']))} | {r['batch']} | "
              f"{r['precision']} |{cols} {r['samples_per_s']:.1f} | {ratio:.2f} | "
              f"{100 * r['data_share']:.1f} | {r['peak_mib']:.0f} | {r['final_loss']:.4f} |")


if __name__ == "__main__":
    main()
