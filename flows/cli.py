"""The ``omnidistill`` console script.

``run`` and ``demo`` start Prefect flows; ``synth``, ``evaluate`` and ``label`` call dd_core directly.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import threading
import time
import traceback
from typing import Any, Callable, Sequence

from dd_core.ops.stop import PROCESS
from flows.interrupts import ctrl_c_noted, interruption


def _cmd_synth(args: argparse.Namespace) -> int:
    from dd_core.data.synthetic import make_detection_dataset, make_keypoints_dataset

    make = make_keypoints_dataset if args.task == "keypoints" else make_detection_dataset
    t0 = time.perf_counter()
    coco = make(args.out, num_images=args.images, seed=args.seed, style=args.style, size=args.size,
                start_id=args.start_id, empty_fraction=args.empty_fraction)
    empty = len(coco["images"]) - len({a["image_id"] for a in coco["annotations"]})
    print(f"wrote {len(coco['images'])} images ({empty} without objects) and {len(coco['annotations'])} "
          f"annotations to {args.out} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from dd_core.data.coco import load_coco, resolve_dataset
    from dd_core.device import resolve_device
    from dd_core.evaluate.checkpoint_eval import evaluate_checkpoint
    from dd_core.tta.settings import MultiTransformSettings

    annotations, images = resolve_dataset(args.data, args.images)
    data = load_coco(annotations, images)
    tta = MultiTransformSettings(scales=args.scales, flip=not args.no_flip) if args.tta else None
    stats = evaluate_checkpoint(args.checkpoint, data, tta, device=resolve_device(args.device),
                                batch_size=args.batch_size, progress=not args.quiet, stop=PROCESS)
    print(json.dumps(stats, indent=2))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from flows.demo import run_demo

    return run_demo(args.out, quick=args.quick, keep_server=args.keep_server, verbose=args.verbose)


def _cmd_run(args: argparse.Namespace) -> int:
    from dd_core.config import check_run_inputs, inputs_checked, load_config
    from flows.run import run_and_report, with_run_id

    config = with_run_id(load_config(args.config, args.set))
    counts = check_run_inputs(config)  # bad input fails here, in seconds, before a flow run exists
    print(f"run {config.run_id}: outputs in {config.storage.root}/runs/{config.run_id}", file=sys.stderr)
    with inputs_checked(config, counts):  # the flow's validate_inputs trusts this check
        return run_and_report(config, args.config, args.set, verbose=args.verbose)


def _cmd_label(args: argparse.Namespace) -> int:
    from dd_core.device import resolve_device
    from dd_core.pseudo.pipeline import FixedThresholds
    from dd_core.standalone import LabelRequest, pseudo_label_images
    from dd_core.tta.settings import MultiTransformSettings

    request = LabelRequest(args.checkpoint, args.images, args.out,
                           MultiTransformSettings(scales=args.scales, flip=not args.no_flip), root=args.root,
                           labeled=args.labeled, fixed=FixedThresholds(args.score_threshold, args.keypoint_threshold),
                           device=resolve_device(args.device), batch_size=args.batch_size,
                           shard_size=args.shard_size, overwrite=args.overwrite, max_pixels=args.max_pixels)
    out = pseudo_label_images(request, progress=not args.quiet, stop=PROCESS)
    print(json.dumps(out, indent=2))
    return 0


def _bounded(kind: type, low: float, high: float) -> Callable[[str], Any]:
    """An argparse type: a ``kind`` number from ``low`` to ``high`` (the run config's bounds)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not low <= value <= high:  # also refuses nan
            shown = (lambda v: str(int(v))) if kind is int else (lambda v: f"{v:g}")
            raise argparse.ArgumentTypeError(f"expected {shown(low)} to {shown(high)}, got {text}")
        return value

    return parse


def _add_inference_arguments(parser: argparse.ArgumentParser, batch_size: int) -> None:
    """What ``evaluate`` and ``label`` share: the transform set and where and how inference runs."""
    from dd_core.models.presets import MAX_SIDE
    from dd_core.tta.settings import DEFAULT_SCALES

    parser.add_argument("--scales", type=_bounded(int, 1, MAX_SIDE), nargs="+", default=list(DEFAULT_SCALES),
                        help=f"TTA scales (shorter side, px; default {' '.join(map(str, DEFAULT_SCALES))})")
    parser.add_argument("--no-flip", action="store_true", help="TTA without horizontal flip")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps (default auto)")
    parser.add_argument("--batch-size", type=_bounded(int, 1, 1024), default=batch_size,
                        help=f"images per batch (default {batch_size})")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_synth(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("synth", parents=[common], help="write a synthetic COCO data set (stick-figure people or shapes)",
                       description="Write OUT/annotations.json (COCO) and OUT/images/.")
    s.add_argument("task", choices=["keypoints", "detection"])
    s.add_argument("out", help="output folder")
    s.add_argument("--images", type=int, default=100, help="number of images (default 100)")
    s.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    s.add_argument("--style", default="coco", help="image style: coco or sports (default coco)")
    s.add_argument("--size", type=int, default=128, help="shorter image side in pixels (default 128)")
    s.add_argument("--start-id", type=int, default=1, help="first image id (default 1)")
    s.add_argument("--empty-fraction", type=_bounded(float, 0.0, 1.0), default=0.0,
                   help="share of images drawn with no person / shape, only background and clutter, as in real "
                   "pools (about half of COCO's images hold no person); 0 to 1, default 0")
    s.set_defaults(func=_cmd_synth)


def _add_evaluate(sub: Any, common: argparse.ArgumentParser) -> None:
    e = sub.add_parser("evaluate", parents=[common], help="COCO-evaluate a checkpoint, print metrics as JSON",
                       description="Evaluate a teacher or student checkpoint with COCOeval.")
    e.add_argument("--checkpoint", required=True, help="checkpoint URL (path, file:// or s3://)")
    e.add_argument("--data", required=True, help="data set folder (annotations.json + images/) or a COCO json")
    e.add_argument("--images", help="images root, if not beside the json")
    e.add_argument("--tta", action="store_true", help="multi-transform inference (scales x flip)")
    _add_inference_arguments(e, batch_size=8)
    e.set_defaults(func=_cmd_evaluate)


def _add_run(sub: Any, common: argparse.ArgumentParser) -> None:
    r = sub.add_parser("run", parents=[common], help="run the whole distillation flow from a YAML config",
                       description="Teacher -> multi-transform inference on unlabeled shards -> pseudo-labels -> "
                       "student -> COCO evaluation. Same run_id again resumes the run.")
    r.add_argument("config", help="run config (YAML); see configs/ for examples")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set teacher.iterations=500 (repeatable)")
    r.set_defaults(func=_cmd_run)


def _add_label(sub: Any, common: argparse.ArgumentParser) -> None:
    from dd_core.data.images import MAX_PIXELS

    lb = sub.add_parser("label", parents=[common], help="write pseudo-labels (COCO json) for a folder or bucket of "
                        "images", description="Multi-transform inference with a checkpoint on unlabeled images, "
                        "then selection: per-category thresholds calibrated on --labeled (the paper's rule), or a "
                        "fixed --score-threshold.")
    lb.add_argument("--checkpoint", required=True, help="teacher checkpoint URL")
    lb.add_argument("--images", required=True, help="folder/prefix of images, a .txt list, or an image-only COCO json")
    lb.add_argument("--out", required=True, help="output json URL, e.g. o/pseudo.json (o/pseudo.thresholds.json and "
                    "the folder o/pseudo.predictions/ go beside it), or a folder (writes annotations.json in it); "
                    "never an input nor inside one")
    lb.add_argument("--overwrite", action="store_true", help="replace an existing --out json (or its "
                    ".thresholds.json) that omnidistill label did not write; without it, label refuses")
    lb.add_argument("--root", help="where relative names of a .txt list or json live")
    lb.add_argument("--labeled", help="labeled COCO json whose density the pseudo-labels should match")
    lb.add_argument("--score-threshold", type=_bounded(float, 0.0, 1.0), default=0.5,
                    help="without --labeled: keep instances scoring >= this (0 to 1, default 0.5)")
    lb.add_argument("--keypoint-threshold", type=_bounded(float, 0.0, 1.0), default=0.5,
                    help="without --labeled: keypoints whose probability-like score (the sigmoid of the heatmap "
                    "logit) is >= this get v=2 (0 to 1, default 0.5). With --labeled both thresholds are "
                    "calibrated instead, as the paper does: prefer that")
    lb.add_argument("--shard-size", type=_bounded(int, 1, 1_000_000), default=256,
                    help="images per shard of predictions (Parquet, beside the json): an interrupted call resumes "
                    "from its last finished shard (default 256)")
    lb.add_argument("--max-pixels", type=_bounded(int, 1, 10**15), default=MAX_PIXELS,
                    help="an image of more pixels (width x height, read from its header) is rejected before it is "
                    f"decoded; larger photos below it are decoded reduced (default {MAX_PIXELS:,}; Pillow refuses "
                    "more than 178,956,970 whatever this is). Changing it relabels the shards done already")
    _add_inference_arguments(lb, batch_size=4)
    lb.set_defaults(func=_cmd_label)


def _add_demo(sub: Any, common: argparse.ArgumentParser) -> None:
    d = sub.add_parser("demo", parents=[common], help="run the embedded default end to end (synthetic data, local "
                       "storage, CPU)")
    d.add_argument("--out", default="./demo-runs", help="where data and runs go (default ./demo-runs)")
    d.add_argument("--quick", action="store_true", help="a minutes-long smoke run with tiny settings")
    d.add_argument("--keep-server", action="store_true", help="leave the local Prefect UI running afterwards")
    d.set_defaults(func=_cmd_demo)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="omnidistill", description="Data distillation for keypoint and object "
                                "detection (Radosavovic et al., 2018): teacher -> multi-transform inference "
                                "-> pseudo-labels -> student.")
    p.add_argument("--verbose", action="store_true", help="print the full traceback of an error")
    # Also accepted after the command; SUPPRESS keeps a subcommand's default from hiding the main flag.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="print the full traceback of an error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_synth, _add_evaluate, _add_run, _add_label, _add_demo):
        add(sub, common)
    return p


def _setup_logging(command: str) -> None:
    """Flows log through Prefect (which also picks up dd_core's loggers); other commands to stderr.

    For a flow the console's formatting is set where the run starts (:func:`flows.run.run_and_report`).
    """
    if command in ("run", "demo"):
        os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "dd_core")  # before Prefect reads its settings
        # Prefect gives extra loggers its API handler but not a level: without one they inherit the
        # root's WARNING, and dd_core's INFO lines ("resumed from iteration ...") would reach neither
        # the console nor the UI.
        logging.getLogger("dd_core").setLevel(logging.INFO)
        return
    logger = logging.getLogger("dd_core")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


# Errors that say the input, the settings or the storage is wrong: exit code 2, as argparse's own.
USAGE_ERRORS = (ValueError, OSError, FloatingPointError)
MAX_MESSAGE = 2000


def error_line(exc: BaseException) -> str:
    """The one line a user sees for a failed command: the message's first line, at most 2,000
    characters (a 10 MB file name must not become 10 MB of terminal output)."""
    lines = str(exc).strip().splitlines() or [""]
    message = lines[0] if len(lines[0]) <= MAX_MESSAGE else lines[0][:MAX_MESSAGE] + " [...]"
    if not isinstance(exc, USAGE_ERRORS):
        message = f"{type(exc).__name__}: {message}"
    return message + (" [...]" if len(lines) > 1 else "")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.command)
    func: Callable[[argparse.Namespace], int] = args.func
    PROCESS.clear()  # a command starts afresh, whatever stopped before it in this process
    try:
        with ctrl_c_noted():
            return func(args)
    except KeyboardInterrupt:  # Ctrl-C outside a run (a run handles its own: flows.run.run_and_report)
        print(f"omnidistill {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if (found := interruption(exc)) is not None:  # an error a library made of the Ctrl-C
            print(f"omnidistill {args.command}: {found[1]}", file=sys.stderr)
            return found[0]
        if args.verbose:
            traceback.print_exc()
        hint = "" if args.verbose else " (--verbose shows the traceback)"
        code = 2 if isinstance(exc, USAGE_ERRORS) else 1
        print(f"omnidistill {args.command}: error: {error_line(exc)}{hint if code == 1 else ''}", file=sys.stderr)
        return code


# After a command, the interpreter's exit waits on the libraries' exit hooks: Prefect drains its log
# and event queues to the API with no timeout, so a server gone for good kept a failed run's process
# alive forever after its last line. The console script gives them this long.
EXIT_GRACE = 30.0


def exit_within(code: int, seconds: float) -> None:
    """End the process with ``code`` after ``seconds`` if the normal exit has not by then."""
    def force() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    timer = threading.Timer(seconds, force)
    timer.daemon = True  # the normal exit does not wait for it
    timer.start()


def entry() -> None:
    """The ``omnidistill`` console script: :func:`main`, and an exit within :data:`EXIT_GRACE` seconds.

    The exit still joins threads, runs every exit hook and finalizes the garbage left at that point
    (the ``gc.collect``: an interrupted stage's objects, held in cycles by its traceback); what the
    freeze skips is the collector's passes over the objects still in use, torch's and Prefect's, as
    the interpreter tears down. After a Ctrl-C while labeling the prompt came 2.9 s after the run's
    last line, and now 1.2 s (medians, bench/stop_latency.py). Python does not promise to finalize
    objects still in use at exit; nothing here writes from a finalizer: writes close their file first.
    """
    code = main()
    exit_within(code, EXIT_GRACE)
    gc.collect()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
