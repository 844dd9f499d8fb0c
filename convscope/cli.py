"""The command line: argparse -> a frozen config -> the same functions the Python API calls.

Imports stay light at the top so `convscope --help` answers at once; torch and matplotlib load
only when a command needs them. Every user error is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


class UserError(Exception):
    """A problem with what the user asked for, printed as one line without a traceback."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + error
        raise UserError(f"{self.prog}: {message}")


def _number(kind: Callable, check: Callable, expected: str) -> Callable[[str], object]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, received {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, received {text!r}")
        return value

    return parse


non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_int = _number(int, lambda v: v >= 1, "an integer >= 1")
positive_float = _number(float, lambda v: v > 0 and v != float("inf"), "a number > 0")
fraction = _number(float, lambda v: 0 < v < 1, "a number between 0 and 1")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="convscope", description="Build, train and look inside CNNs "
                     "(chapter 13 of the fastai book).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    t = sub.add_parser("train", help="train simple_cnn with 1cycle and write a run folder",
                       description="Train the book's simple_cnn (batchnorm, AdamW, 1cycle) and "
                       "write metrics.csv, model.safetensors and plots to the run folder.")
    t.add_argument("--data", metavar="DIR", help="folder with the four MNIST-layout IDX files "
                   "(default: MNIST, embedded)")
    t.add_argument("--epochs", type=non_negative_int, default=5, help="default: 5")
    t.add_argument("--lr", type=positive_float, default=1e-2, help="peak lr (default: 0.01)")
    t.add_argument("--bs", type=positive_int, default=512, help="batch size (default: 512)")
    t.add_argument("--seed", type=non_negative_int, default=0, help="default: 0")
    t.add_argument("--out", metavar="DIR", default="runs/latest",
                   help="run folder (default: runs/latest)")
    t.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    t.add_argument("--subset", type=positive_int, metavar="N",
                   help="train on N random training images")
    t.add_argument("--valid-pct", type=fraction, metavar="P",
                   help="hold out P of the training set as valid set (default: the test set)")
    t.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="keep NCHW memory order")
    t.set_defaults(func=_train)
    return parser


def _train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from convscope.data import missing_idx_files
    from convscope.recipe import TrainConfig, run_training

    if args.data is not None:
        folder = Path(args.data)
        if not folder.is_dir():
            raise UserError(f"--data: no such folder: {args.data!r}")
        missing = missing_idx_files(folder)
        if missing:
            raise UserError(f"--data: {args.data!r} lacks {', '.join(missing)} (raw or .gz)")
    cfg = TrainConfig(data=args.data, epochs=args.epochs, lr=args.lr, bs=args.bs,
                      seed=args.seed, out=args.out, device=args.device, subset=args.subset,
                      valid_pct=args.valid_pct, channels_last=args.channels_last)
    run_training(cfg)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `convscope` command; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (UserError, ValueError, FileNotFoundError) as e:
        print(f"convscope: error: {e}" if not str(e).startswith("convscope") else str(e),
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convscope: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
