"""The ``medae`` command.  It only parses arguments and calls library functions."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from medae import __version__
from medae.errors import MedaeError

log = logging.getLogger("medae")


def _cmd_info(args: argparse.Namespace) -> int:
    from medae.io.discover import discover_with_notes

    failed = 0
    for target in args.paths:
        sources, notes = discover_with_notes(target)
        for note in notes:
            print(f"note: skipped {note}", file=sys.stderr)
        if not sources:
            print(f"note: {target}: no NIfTI file or DICOM image series found", file=sys.stderr)
        for src in sources:
            try:
                scan = src.load()
            except MedaeError as exc:
                failed += 1
                print(f"{src.case_id}\t{src.kind}\tFAILED\t{exc}")
                continue
            sx, sy, sz = scan.spacing
            print(f"{src.case_id}\t{scan.kind}\t{'x'.join(map(str, scan.shape))}\t"
                  f"{sx:.3g}x{sy:.3g}x{sz:.3g} mm\t{scan.grid_orientation}")
    return 1 if failed else 0


def _cmd_train(args: argparse.Namespace) -> int:
    from medae.config import load_config
    from medae.io.discover import discover_with_notes
    from medae.train import train

    overrides = list(args.set or [])
    for flag, key in (("epochs", "train.epochs"), ("seed", "train.seed"),
                      ("precision", "train.precision")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    config = load_config(args.config, overrides)
    sources, notes = discover_with_notes(args.data)
    for note in notes:
        print(f"note: skipped {note}", file=sys.stderr)
    run = train(config, sources, args.output, resume=args.resume, device=args.device,
                progress=not args.quiet)
    print(f"model bundle: {run}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medae",
        description="Unsupervised anomaly detection in medical images with autoencoders.")
    parser.add_argument("--version", action="version", version=f"medae {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = sub.add_parser(
        "info", help="list the scans found in files, folders or manifests",
        description="One line per scan found: case id, kind, shape, spacing (mm), and the "
                    "orientation codes of the source grid.  Exit status 1 when a scan fails.")
    info.add_argument("paths", nargs="+", metavar="PATH",
                      help="NIfTI file, DICOM file or folder, or CSV manifest")
    info.set_defaults(func=_cmd_info)

    tr = sub.add_parser(
        "train", help="train an autoencoder on healthy scans",
        description="Train the recipe in --config on the healthy scans in --data (a folder or a "
                    "CSV manifest; manifest labels drop lesion slices/patches) and write the "
                    "model bundle (model.safetensors, model.json), config.yaml, log.csv and a "
                    "checkpoint into --output.")
    tr.add_argument("--config", required=True, help="YAML recipe (see configs/)")
    tr.add_argument("--data", required=True, help="folder of healthy scans, or CSV manifest")
    tr.add_argument("--output", required=True, help="run folder")
    tr.add_argument("--epochs", type=int, help="override train.epochs")
    tr.add_argument("--seed", type=int, help="override train.seed")
    tr.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    tr.add_argument("--precision", choices=["32", "bf16", "fp16"], help="override train.precision")
    tr.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="dotted override, e.g. --set model.latent_size=256 (repeatable)")
    tr.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    tr.set_defaults(func=_cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MedaeError as exc:
        print(f"medae: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("medae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
