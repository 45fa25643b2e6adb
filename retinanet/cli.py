"""Command-line interface: ``retinanet SUBCOMMAND ...`` (also ``python -m retinanet``).

One short function per sub-command: it turns parsed options into config objects and calls the
engine. Library code raises ``RetinaNetError``; here it becomes one clear line on stderr and exit
status 2 (1 for a dataset check that found problems, 130 for Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from retinanet.errors import RetinaNetError


class _Parser(argparse.ArgumentParser):
    """argparse, but a wrong option is one line naming the command, not a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def add_data_options(p: argparse.ArgumentParser) -> None:
    """Dataset options shared by train, eval and check-data."""
    g = p.add_argument_group("dataset")
    g.add_argument("--data", metavar="ROOT", help="VOCdevkit root, flat images+XML folder, or COCO annotation JSON (default: the embedded synthetic dataset)")
    g.add_argument("--format", choices=["voc", "voc-flat", "coco"], help="force the dataset kind instead of detecting it")
    g.add_argument("--year", dest="years", action="append", metavar="YEAR", help="VOC year, repeatable (--year 2007 --year 2012); default: every VOC20xx folder found")
    g.add_argument("--train-split", default="train", help="training split (VOC ImageSets/Main name or COCO split) [train]")
    g.add_argument("--val-split", default="val", help="validation split [val]")
    g.add_argument("--classes", metavar="JSON", help='class map JSON {"name": id, ...}; default: discovered from the annotations')
    g.add_argument("--val-fraction", type=float, default=0.2, help="flat layout: share of images held out for validation [0.2]")
    g.add_argument("--split-seed", type=int, default=0, help="flat layout: seed of the deterministic split [0]")
    g.add_argument("--skip-bad", action="store_true", help="skip bad items (each reported) instead of stopping")


# --- make-synthetic / check-data (retinanet.data) -------------------------------------------------


def _add_make_synthetic(sub) -> None:
    p = sub.add_parser("make-synthetic", help="write the embedded synthetic VOC-format dataset")
    p.set_defaults(func=cmd_make_synthetic)


def cmd_make_synthetic(args: argparse.Namespace) -> int:
    raise RetinaNetError("make-synthetic is not available yet")


def _add_check_data(sub) -> None:
    p = sub.add_parser("check-data", help="read a dataset as training would and report every problem")
    add_data_options(p)
    p.set_defaults(func=cmd_check_data)


def cmd_check_data(args: argparse.Namespace) -> int:
    raise RetinaNetError("check-data is not available yet")


# --- train (retinanet.engine.train) ---------------------------------------------------------------


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a detector (CPU, one GPU, or many with torchrun)")
    add_data_options(p)
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    raise RetinaNetError("train is not available yet")


# --- eval / predict (retinanet.engine.evaluate, retinanet.engine.predict) -------------------------


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="COCO (and VOC) metrics of a checkpoint on a dataset")
    add_data_options(p)
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    raise RetinaNetError("eval is not available yet")


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="detect objects in images and draw them")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    raise RetinaNetError("predict is not available yet")


# --- export (retinanet.engine.export) -------------------------------------------------------------


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export the whole detector to ONNX and verify it with onnxruntime")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    raise RetinaNetError("export is not available yet")


# --- demo -----------------------------------------------------------------------------------------


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="synthetic data -> quick training -> eval -> predictions, on a CPU")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    raise RetinaNetError("demo is not available yet")


# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="retinanet",
        description="Train, evaluate, run and export RetinaNet object detectors on VOC and COCO data.",
    )
    from retinanet import __version__

    parser.add_argument("--version", action="version", version=f"retinanet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in (_add_make_synthetic, _add_check_data, _add_train, _add_eval, _add_predict, _add_export, _add_demo):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RetinaNetError as err:
        print(f"retinanet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"retinanet {args.command}: interrupted", file=sys.stderr)
        return 130
