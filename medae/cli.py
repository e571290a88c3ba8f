"""The ``medae`` command.  It only parses arguments and calls library functions."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
import warnings
from collections.abc import Sequence

from medae.errors import MedaeError, failure_reason
from medae.version import __version__

log = logging.getLogger("medae")


#: ``medae info`` reads the voxels of a NIfTI volume up to this size (and so finds NaN or a
#: truncated gzip stream); a larger one is described from its header alone
INFO_HEADER_ONLY_VOXELS = 1 << 25


def layout_options(args: argparse.Namespace):
    """``--bids`` and ``--derivatives`` as :class:`medae.io.layouts.LayoutOptions`."""
    from medae.io.layouts import LayoutOptions, parse_bids_filters

    return LayoutOptions(bids_filters=parse_bids_filters(getattr(args, "bids", None)),
                         derivatives=getattr(args, "derivatives", None))


def _add_layout_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bids", metavar="FILTERS",
                        help="BIDS entity filters, e.g. \"run=2 acq=mprage suffix=FLAIR,T1w\": "
                             "each term picks among a case's scans of one sequence (none: "
                             "those without the entity); suffix keeps those sequences")
    parser.add_argument("--derivatives", metavar="NAME",
                        help="BIDS: the derivatives dataset (derivatives/NAME, or a path) holding "
                             "lesion labels (desc-lesion_mask) and brain masks (desc-brain_mask)")


def _discover(path, args: argparse.Namespace):
    """The sources under ``path`` (layouts by ``--bids``/``--derivatives``), notes printed."""
    from medae.io.discover import discover_dataset

    found = discover_dataset(path, layout_options(args))
    for note in found.notes:
        print(f"note: skipped {note}", file=sys.stderr)
    return found


def _companions(src, root) -> str:
    """A layout case's ``mask`` and ``label`` for ``medae info``, relative to the dataset."""
    from pathlib import Path

    def shown(p):
        if p is None:
            return "-"
        try:
            return str(Path(p).relative_to(root))
        except ValueError:
            return str(p)

    return f"\tmask {shown(src.mask)}\tlabel {shown(src.label)}"


def _cmd_info(args: argparse.Namespace) -> int:
    from medae.io.nifti import read_nifti_geometry

    failed = 0
    for target in args.paths:
        found = _discover(target, args)
        sources = found.sources
        if found.layout is not None:
            others = len(sources) - len(found.layout.cases)
            print(found.layout.describe() + (f"; {others} other scan(s) outside its case "
                                             "folders" if others else ""))
        if not sources:
            print(f"note: {target}: no NIfTI file or DICOM image series found", file=sys.stderr)
        for src in sources:
            extra = _companions(src, target) if src.layout is not None else ""
            try:
                if (src.kind == "nifti" and not src.sequences and not src.problem
                        and src.volume is None and src.voxels() > INFO_HEADER_ONLY_VOXELS):
                    # a large volume: its header says it all (no 4 GB of pixels for a shape)
                    shape, (sx, sy, sz), codes = read_nifti_geometry(src.path)
                    kind = src.kind
                else:
                    scan = src.load()
                    if src.sequences:
                        src.load_sequences(scan)  # co-registered? (refused when not)
                    shape, (sx, sy, sz), codes = scan.shape, scan.spacing, scan.grid_orientation
                    kind = scan.kind
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # one scan never stops the listing
                failed += 1
                print(f"{src.case_id}\t{src.kind}\tFAILED\t{failure_reason(src.path, exc)}"
                      f"{extra}")
                continue
            seqs = (f"\tsequences {','.join(src.sequence_names)}"
                    if src.sequences or src.layout is not None else "")
            print(f"{src.case_id}\t{kind}\t{'x'.join(map(str, shape))}\t"
                  f"{sx:.3g}x{sy:.3g}x{sz:.3g} mm\t{codes}{seqs}{extra}")
    return 1 if failed else 0


#: ``--brain`` (medae.preprocess.BRAIN_MODES; not imported here: the CLI starts without torch)
BRAIN_CHOICES = ("auto", "extract", "given", "none")
BRAIN_HELP = ("brain mask: auto (a skull-stripped scan as it is, any other brain-extracted), "
              "extract, given (the manifest's mask) or none (not a brain recipe); overrides "
              "preprocess.brain")
#: ``--registration`` (medae.preprocess.REGISTRATION_MODES)
REGISTRATION_CHOICES = ("auto", "rigid", "none")
REGISTRATION_HELP = ("further sequences onto the first's grid: rigid (registered by mutual "
                     "information), auto (rigid unless stored on the first's grid) or none "
                     "(world coordinates as written); overrides preprocess.registration")
#: ``--space`` (medae.preprocess.SPACES) and ``--bias-correction`` (BIAS_CORRECTIONS)
SPACE_CHOICES = ("native", "template")
SPACE_HELP = ("the model's space: native (each scan's own pose and size) or template (each "
              "brain affinely registered to the shipped MNI template first; maps and "
              "candidates come back on the scan's grid); overrides preprocess.space")
BIAS_CHOICES = ("n4", "none")
BIAS_HELP = ("n4 (each input divided by its N4 bias field, fitted inside the brain mask) or "
             "none; overrides preprocess.bias_correction")


def train_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` items, then the flags that map onto recipe keys: a flag given wins over the
    recipe and over ``--set``.  ``--epochs`` trains that many epochs even where the recipe sets
    ``train.steps`` (steps, when set, decide the epochs), and ``--steps`` that many steps."""
    if args.epochs is not None and args.steps is not None:
        raise MedaeError("--epochs and --steps exclude each other (steps decide the epochs)")
    overrides = list(args.set or [])
    for flag, key in (("epochs", "train.epochs"), ("steps", "train.steps"),
                      ("seed", "train.seed"), ("precision", "train.precision"),
                      ("brain", "preprocess.brain"),
                      ("registration", "preprocess.registration"),
                      ("space", "preprocess.space"),
                      ("bias_correction", "preprocess.bias_correction")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.epochs is not None:
        overrides.append("train.steps=null")
    return overrides


def _cmd_train(args: argparse.Namespace) -> int:
    import json

    from medae.config import load_config
    from medae.train import train

    config = load_config(args.config, train_overrides(args))
    sources = _discover(args.data, args).sources
    run = train(config, sources, args.output, resume=args.resume, device=args.device,
                progress=not args.quiet)
    print(f"model bundle: {run}")
    _print_operating_point(json.loads((run / "model.json").read_text()).get("calibration"))
    return 0


def _print_operating_point(cal: dict | None) -> None:
    """What ``medae score`` will flag by default, as the bundle records it (its warnings were
    logged by the calibration)."""
    cal = cal or {}
    if cal.get("default_threshold") is not None:
        print(f"operating point ({cal['default']}): threshold {cal['default_threshold']:.4g}, "
              f"{cal.get('default_rule', '')}")


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from medae.calibrate import recalibrate

    sources = _discover(args.data, args).sources
    run, cal = recalibrate(args.model, sources, args.output,
                           operating_point=args.operating_point, froc_fp=args.froc_fp,
                           map_units=args.map_units, device=args.device)
    print(f"model bundle: {run}")
    _print_operating_point(cal)
    return 0


def _check_flags(args: argparse.Namespace) -> None:
    """Every score flag checked once, before the model or any scan is read."""
    if args.threshold is not None and not math.isfinite(args.threshold):
        raise MedaeError(f"--threshold {args.threshold}: expected a finite number")
    if args.fpr is not None and not (math.isfinite(args.fpr) and 0 < args.fpr < 1):
        raise MedaeError(f"--fpr {args.fpr}: expected a false-positive rate between 0 and 1")
    if args.fpr is not None and args.threshold is not None:
        raise MedaeError("--fpr and --threshold exclude each other")
    if not 1 <= args.batch_size <= 65536:
        raise MedaeError(f"--batch-size {args.batch_size}: expected an integer from 1 to 65536")
    if not 1 <= args.workers <= 64:
        raise MedaeError(f"--workers {args.workers}: expected an integer from 1 to 64")


def _cmd_score(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medae.batch import check_output, parse_shard, score_sources
    from medae.scoring import load_model

    shard = parse_shard(args.shard)
    _check_flags(args)
    layout_options(args)  # --bids checked before the model is read
    check_output(Path(args.output))
    model = load_model(args.model, device=args.device, batch_size=args.batch_size,
                       precision=args.precision, brain=args.brain,
                       registration=args.registration)
    model.resolve_threshold(args.fpr, args.threshold)  # checked once, not once per scan
    sources = _discover(args.input, args).sources
    if not sources:
        raise MedaeError(args.input, "no NIfTI file or DICOM image series found")
    arguments = {k: v for k, v in vars(args).items() if k not in ("func",)}
    summary = score_sources(
        model, sources, args.output, fpr=args.fpr, threshold=args.threshold, shard=shard,
        resume=args.resume, save_reconstruction=args.save_reconstruction,
        save_latent=args.save_latent, overlays=not args.no_overlays, workers=args.workers,
        progress=not args.quiet, arguments=arguments, save_image=not args.no_image,
        save_channel_maps=args.save_channel_maps)
    print(f"scored {summary.scored}, skipped {summary.skipped} (already done), "
          f"failed {summary.failed}; results in {args.output}")
    return 1 if summary.failed else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medae.evaluation.evaluate import evaluate
    from medae.evaluation.report import write_report

    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise MedaeError(args.output, "--output exists and is not a folder")
    metrics = evaluate(args.predictions, args.labels, layout_options(args))
    out = write_report(metrics, args.output, str(args.predictions), str(args.labels))
    v = metrics["voxel"]

    def f(x):
        return "n/a" if x is None else f"{x:.3f}"

    print(f"voxel AP {f(v['average_precision'])}, AUROC {f(v['auroc'])}, [Dice] (upper bound) "
          f"{f(v['best_dice'])}, Dice at calibrated threshold {f(v['dice_at_threshold'])}, "
          f"lesion recall {f(metrics['lesions']['recall'])}; report in {out / 'report.md'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medae.demo import DemoSize, print_summary, run_demo

    size = DemoSize(steps=args.steps) if args.steps else DemoSize()
    summary = run_demo(args.output, size=size, seed=args.seed, device=args.device,
                       progress=not args.quiet)
    print_summary(summary, Path(args.output))
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from medae.convert import convert_checkpoint

    run = convert_checkpoint(args.checkpoint, args.config, args.output,
                             trust_pickle_code_execution=args.trust_pickle_code_execution)
    print(f"model bundle: {run} (no calibrated threshold: score with --threshold)")
    return 0


def _cmd_view(args: argparse.Namespace) -> int:
    from medae.report.server import serve

    return serve(args.folder, args.host, args.port, allow_remote=args.allow_remote,
                 open_browser=not args.no_browser, quiet=not args.verbose)


def build_parser() -> argparse.ArgumentParser:
    from medae.config import MAP_UNITS, OPERATING_POINTS

    parser = argparse.ArgumentParser(
        prog="medae",
        description="Unsupervised anomaly detection in medical images with autoencoders.")
    parser.add_argument("--version", action="version", version=f"medae {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Each command spells out its own options: the runs of add_argument calls below look alike
    # (a duplicate-code finder pairs train's with score's) but name different flags and helps.

    info = sub.add_parser(
        "info", help="list the scans found in files, folders or manifests",
        description="One line per scan found: case id, kind, shape, spacing (mm), and the "
                    "orientation codes of the source grid.  Exit status 1 when a scan fails.")
    info.add_argument("paths", nargs="+", metavar="PATH",
                      help="NIfTI file, DICOM file or folder, CSV manifest, or a dataset (BIDS, "
                           "BraTS, the Decathlon, nnU-Net v2)")
    _add_layout_options(info)
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
    tr.add_argument("--epochs", type=int,
                    help="train this many epochs (wins over the recipe's train.epochs and "
                         "train.steps)")
    tr.add_argument("--steps", type=int,
                    help="train this many optimisation steps (wins over train.steps)")
    tr.add_argument("--seed", type=int, help="override train.seed (wins over the recipe)")
    tr.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    tr.add_argument("--precision", choices=["32", "bf16", "fp16", "auto"],
                    help="override train.precision (wins over the recipe); auto: bf16 where "
                         "the device computes it natively, else 32")
    tr.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    tr.add_argument("--brain", choices=BRAIN_CHOICES, help=BRAIN_HELP)
    tr.add_argument("--registration", choices=REGISTRATION_CHOICES, help=REGISTRATION_HELP)
    tr.add_argument("--space", choices=SPACE_CHOICES, help=SPACE_HELP)
    tr.add_argument("--bias-correction", choices=BIAS_CHOICES, help=BIAS_HELP)
    tr.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="dotted override, e.g. --set model.latent_size=256 (repeatable)")
    tr.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    _add_layout_options(tr)
    tr.set_defaults(func=_cmd_train)

    ca = sub.add_parser(
        "calibrate", help="calibrate a trained model again on other scans (a new bundle)",
        description="Compute a trained model's thresholds and default operating point again on "
                    "--data (e.g. a few labelled patients of your own site: a manifest with a "
                    "label column; or healthy scans) and write the model with them into "
                    "--output; --model is not modified.")
    ca.add_argument("--model", required=True, help="run folder with model.json")
    ca.add_argument("--data", required=True, help="calibration scans: folder or CSV manifest")
    ca.add_argument("--output", required=True, help="new run folder for the calibrated model")
    ca.add_argument("--operating-point", choices=OPERATING_POINTS,
                    help="the default threshold rule (default: the recipe's, usually auto: "
                         "labelled scans -> dice, healthy scans -> candidates)")
    ca.add_argument("--froc-fp", type=float,
                    help="false candidates per scan that the froc rule allows")
    ca.add_argument("--map-units", choices=MAP_UNITS,
                    help="the heat map's units (default: the model's): iqr measures each "
                         "scan's residual in interquartile ranges of its own brain intensities, "
                         "so one threshold means the same on every scan")
    ca.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    _add_layout_options(ca)
    ca.set_defaults(func=_cmd_calibrate)

    sc = sub.add_parser(
        "score", help="heat maps, lesion candidates and overlays for a folder of scans",
        description="Score every scan in --input (NIfTI file, DICOM series folder, folder tree, "
                    "or CSV manifest) with a trained model.  Writes OUT/<case_id>/"
                    "{anomaly_map.nii.gz, candidates.nii.gz, candidates.csv, image.nii.gz, "
                    "overlay_*.png}, OUT/scores.csv, OUT/failures.csv, OUT/run.json and the "
                    "report OUT/index.html (see medae view).  A scan that fails is "
                    "recorded and the others go on; exit status 1 when any failed.")
    sc.add_argument("--model", required=True, help="run folder with model.json")
    sc.add_argument("--input", required=True, help="scan file, folder, or CSV manifest")
    sc.add_argument("--output", required=True, help="output folder")
    sc.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    sc.add_argument("--fpr", type=float,
                    help="a voxel rule instead of the default: the threshold calibrated for "
                         "this false-positive rate on healthy brain voxels (e.g. 0.01); by "
                         "default the calibrated operating point (labelled calibration "
                         "patients: the best pooled Dice of the candidates; healthy scans: at "
                         "most one false candidate per scan; see model.json)")
    sc.add_argument("--threshold", type=float, help="voxel threshold set by hand")
    sc.add_argument("--shard", help="i/n: score only the i-th of n parts (SLURM arrays, GPUs)")
    sc.add_argument("--continue", dest="resume", action="store_true",
                    help="skip scans already finished in OUT")
    sc.add_argument("--save-reconstruction", action="store_true",
                    help="also write the reconstruction (the 'denoised' scan) per case")
    sc.add_argument("--save-latent", action="store_true",
                    help="also write OUT/latents.npz: one latent code per scan")
    sc.add_argument("--save-channel-maps", action="store_true",
                    help="multi-sequence models: also write each input sequence's own map "
                         "(anomaly_map_<sequence>.nii.gz; anomaly_map.nii.gz is the maximum over "
                         "the recipe's scoring.channels)")
    sc.add_argument("--brain", choices=BRAIN_CHOICES,
                    help=BRAIN_HELP.replace("preprocess.brain", "the model's preprocess.brain"))
    sc.add_argument("--registration", choices=REGISTRATION_CHOICES,
                    help=REGISTRATION_HELP.replace("preprocess.registration",
                                                   "the model's preprocess.registration"))
    sc.add_argument("--no-overlays", action="store_true", help="skip the PNG pictures")
    sc.add_argument("--no-image", action="store_true",
                    help="do not write image.nii.gz (the scan on its grid, the background of "
                         "the medae view case page)")
    sc.add_argument("--batch-size", type=int, default=32, help="slices/windows per forward pass")
    sc.add_argument("--precision", choices=["32", "bf16", "fp16"], default="32",
                    help="inference precision (default 32)")
    sc.add_argument("--workers", type=int, default=2,
                    help="threads loading and preprocessing ahead of the model (default 2)")
    sc.add_argument("-q", "--quiet", action="store_true", help="no per-scan progress lines")
    _add_layout_options(sc)
    sc.set_defaults(func=_cmd_score)

    ev = sub.add_parser(
        "evaluate", help="metrics of scored scans against ground-truth lesion masks",
        description="Read the outputs of medae score and lesion masks (any label > 0 is a "
                    "lesion) and write REPORT_DIR/metrics.json, report.md and plots: pooled "
                    "voxel AP and AUROC, [Dice] (upper bound), Dice at the calibrated threshold, "
                    "lesion-wise recall and false positives by size, an FROC curve (recall "
                    "against false-positive candidates per scan), scan-level AUROC/AP.")
    ev.add_argument("--predictions", required=True, help="output folder of medae score")
    ev.add_argument("--labels", required=True,
                    help="manifest (case_id,image[,mask],label), folder of label files "
                         "named by case id, or the dataset (BIDS with --derivatives, BraTS, "
                         "the Decathlon, nnU-Net v2): its cases' labels")
    ev.add_argument("--output", required=True, help="report folder")
    _add_layout_options(ev)
    ev.set_defaults(func=_cmd_evaluate)

    cv = sub.add_parser(
        "convert-checkpoint", help="turn a trusted pickle-based PyTorch checkpoint into a bundle",
        description="Unpickle a PyTorch checkpoint (.pt/.pth/.ckpt: a state dict, or a dict with "
                    "'model' or 'state_dict'), build the network of --config, load the weights "
                    "strictly and write a safetensors model bundle into --output.  Unpickling "
                    "can run arbitrary code: it happens only with --trust-pickle-code-execution.")
    cv.add_argument("--checkpoint", required=True, help="pickle-based checkpoint file")
    cv.add_argument("--config", required=True, help="YAML recipe the weights were trained with")
    cv.add_argument("--output", required=True, help="new run folder for the bundle")
    cv.add_argument("--trust-pickle-code-execution", action="store_true",
                    help="I trust this file's origin: unpickling it may run arbitrary code")
    cv.set_defaults(func=_cmd_convert)

    vi = sub.add_parser(
        "view", help="look at a scored folder in the browser: report and 3D case pages",
        description="Serve OUT (an output folder of medae score, or a demo folder) to a browser "
                    "on this machine and open its index.html: the table of cases, and for each "
                    "case the scan with its heat map and candidates in 3D.  Listens on "
                    "127.0.0.1 only, unless --host names another address and --allow-remote "
                    "is given.  Ctrl-C stops it.")
    vi.add_argument("folder", metavar="OUT", help="output folder holding index.html")
    vi.add_argument("--port", type=int, default=8765,
                    help="port (default 8765; 0 picks a free one)")
    vi.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1; others need --allow-remote)")
    vi.add_argument("--allow-remote", action="store_true",
                    help="allow a non-loopback --host: anyone reaching it sees the scans")
    vi.add_argument("--no-browser", action="store_true", help="do not open a browser")
    vi.set_defaults(func=_cmd_view)

    de = sub.add_parser(
        "demo", help="the whole pipeline in minutes on synthetic data made from a shipped "
                     "template",
        description="Generate healthy subjects and patients with known lesions from the shipped "
                    "MNI template (one patient as a DICOM series), train a small denoising "
                    "U-Net, calibrate its threshold on healthy validation subjects, score the "
                    "patients and a held-out healthy subject, evaluate, and write overlays and "
                    "DIR/index.html.  A few minutes on a laptop CPU; uses a GPU when there is "
                    "one.")
    de.add_argument("--output", required=True, help="a new folder for everything")
    de.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    de.add_argument("--seed", type=int, default=0, help="data and training seed (default 0)")
    de.add_argument("--steps", type=int, help="training steps (default 500)")
    de.add_argument("-q", "--quiet", action="store_true", help="only the final summary")
    de.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    for name in ("pydicom", "nibabel"):  # their log lines may quote file contents
        logging.getLogger(name).propagate = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # never printed: library warnings quote file text
            rc = int(args.func(args) or 0)
            sys.stdout.flush()  # a reader gone (| head) is seen here, not at exit
            return rc
    except MedaeError as exc:
        print(f"medae: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("medae: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `medae info DIR | head`: the reader has gone, so has our output
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # a file-system refusal no closer check caught: one line still
        where = exc.filename if exc.filename is not None else "medae"
        print(f"medae: error: {MedaeError(where, exc.strerror or type(exc).__name__)}",
              file=sys.stderr)
        return 1
    except RecursionError:
        print("medae: error: an input is nested too deeply (folders, JSON or YAML) to be read",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
