"""The command line: argparse -> a frozen config -> the same functions the Python API calls.

Imports stay light at the top so `convscope --help` answers at once; torch and matplotlib load
only when a command needs them. Every user error is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from convscope.config import default, options
from convscope.errors import ConvscopeError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + error
        raise UsageError(f"{self.prog}: {message}")


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


# `train` offers every option TrainConfig declares
TRAIN_OPTIONS = tuple(options())


def add_options(parser: argparse.ArgumentParser, names: Sequence[str],
                suppress: bool = False) -> None:
    """Add TrainConfig's options `names` to `parser`, each as its declaration says.

    Args:
        suppress: leave an option that is not given out of the parsed namespace, so the
            caller knows which were typed (`--resume` refuses all but --device).
    """
    opts = options()
    for name in names:
        o = opts[name]
        value = default(name)
        shown = o.unset if value is None else value
        text = o.help if o.kind is None else f"{o.help} (default: {shown})"
        kw: dict = {"dest": name, "help": text.replace("%", "%%"),  # argparse formats help
                    "default": argparse.SUPPRESS if suppress else value}
        if o.kind is None and value is None:  # a switch a recipe sets: --x and --no-x
            kw["action"] = argparse.BooleanOptionalAction
        elif o.kind is None:  # a switch: --no-x turns off a default-on setting
            kw["action"] = "store_false" if value else "store_true"
        elif o.choices is not None:
            kw["choices"] = o.choices
        else:
            kw["type"] = _number(o.kind, o.check, o.expected) if o.check else o.kind
        if o.metavar:
            kw["metavar"] = o.metavar
        parser.add_argument(o.flag, **kw)


def _add_image(parser: argparse.ArgumentParser) -> None:
    """IMAGE and --index, shared by the commands that work on one image."""
    parser.add_argument("image", nargs="?", help="an image file (default: an MNIST digit)")
    parser.add_argument("--index", type=non_negative_int, default=0,
                        help="which MNIST training digit when no IMAGE is given (default: 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="convscope", description="Build, train and look inside CNNs "
                     "(chapter 13 of the fastai book).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    t = sub.add_parser("train", help="train simple_cnn by a recipe and write a run folder",
                       description="Train simple_cnn by a recipe (default: book, the chapter's "
                       "final run: fit_one_cycle(5, 0.1), bs 512; fast: beyond the book) and "
                       "write metrics.csv, model.safetensors, plots and report.html to the run "
                       "folder.")
    add_options(t, TRAIN_OPTIONS, suppress=True)
    t.add_argument("--resume", metavar="RUN_DIR",
                   help="continue RUN_DIR from its checkpoint with the settings in its "
                   "config.json (only --device and --nproc may change)")
    t.add_argument("--overwrite", action="store_true", default=argparse.SUPPRESS,
                   help="replace the run the --out folder holds (its files are deleted first)")
    g = t.add_argument_group("several processes and machines (also with --resume)")
    g.add_argument("--nnodes", type=positive_int, default=1, metavar="M",
                   help="machines in the group, each started with the same command (default: 1)")
    g.add_argument("--node-rank", type=non_negative_int, default=0, metavar="R",
                   help="this machine's place, 0 on the machine at --rdzv-endpoint (default: 0)")
    g.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                   help="with --nnodes: where the machines meet (HOST: the machine of node rank 0)")
    g.add_argument("--rdzv-timeout", type=positive_float, default=600.0, metavar="S",
                   help="seconds for every machine to join (default: 600)")
    g.add_argument("--max-restarts", type=non_negative_int, default=0, metavar="K",
                   help="restart a failed group of processes up to K times, each resuming from "
                   "the last checkpoint (default: 0)")
    t.set_defaults(func=_train)

    k = sub.add_parser("kernel", help="apply a kernel to an image and draw the result",
                       description="Filter an image with a named 3x3 kernel (colour images: "
                       "one kernel per channel, summed) and write <kernel>.png and a grid of "
                       "the image under every named kernel, kernels.png.")
    _add_image(k)
    k.add_argument("--kernel", default="top_edge", help="default: top_edge")
    k.add_argument("--out", metavar="DIR", default="runs/kernel",
                   help="folder for the PNGs (default: runs/kernel)")
    k.set_defaults(func=_kernel)

    cs = sub.add_parser("conv-sheet", help="write the chapter's conv-example spreadsheet",
                        description="Write an .xlsx workbook: a digit as cells, two 3x3 "
                        "kernels and their outputs as live formulas, a second layer over both; "
                        "trace precedents on any activation to see its receptive field.")
    _add_image(cs)
    cs.add_argument("--kernel", nargs="+", metavar="NAME",
                    help="layer 1's kernels (default: top_edge left_edge)")
    cs.add_argument("--out", metavar="FILE.xlsx", default="runs/conv-example.xlsx",
                    help="default: runs/conv-example.xlsx")
    cs.set_defaults(func=_conv_sheet)

    e = sub.add_parser("explore", help="trace an activation's receptive field in a browser",
                       description="Run one image through a trained run's model and write a "
                       "self-contained page of every conv layer's activation maps; click an "
                       "activation to outline its receptive field (trace precedents), or an "
                       "input pixel to outline what it reaches (trace dependents).")
    e.add_argument("run_dir", metavar="RUN_DIR")
    _add_image(e)
    e.add_argument("--out", metavar="FILE.html", help="default: RUN_DIR/explore.html")
    e.add_argument("--model", metavar="FILE.py:FUNCTION",
                   help="the run's model, when it is a function of yours (it is run only "
                   "when named here)")
    e.set_defaults(func=_explore)

    m = sub.add_parser("conv-matrix", help="draw a convolution as a matrix",
                       description="Build the matrix W with W @ x.flatten() == conv(x) for a "
                       "SIZE x SIZE image and a KERNEL x KERNEL kernel, and draw it: each "
                       "weight its own colour, zeros blank.")
    m.add_argument("--size", type=positive_int, default=4, help="image side (default: 4)")
    m.add_argument("--kernel", type=positive_int, default=3, help="kernel side (default: 3)")
    m.add_argument("--stride", type=positive_int, default=1, help="default: 1")
    m.add_argument("--padding", type=non_negative_int, default=0, help="default: 0")
    m.add_argument("--out", metavar="FILE", default="runs/conv_matrix.png",
                   help="PNG to write (default: runs/conv_matrix.png)")
    m.set_defaults(func=_conv_matrix)

    f = sub.add_parser("lr-find", help="sweep the learning rate and suggest one",
                       description="Run lr_find on the recipe's learner (simple_cnn, AdamW): "
                       "an exponential lr sweep from --start-lr to --end-lr over --num-it "
                       "batches; print the suggestions and draw lr_find.png.")
    add_options(f, ("recipe", "data", "bs", "seed", "size", "subset", "device"))
    f.add_argument("--start-lr", type=positive_float, default=1e-7, help="default: 1e-7")
    f.add_argument("--end-lr", type=positive_float, default=10.0, help="default: 10")
    f.add_argument("--num-it", type=positive_int, default=100, help="default: 100")
    f.add_argument("--out", metavar="FILE", default="runs/lr_find.png",
                   help="plot to write (default: runs/lr_find.png)")
    f.set_defaults(func=_lr_find)

    r = sub.add_parser("report", help="rebuild report.html of a run folder",
                       description="Rebuild RUN_DIR/report.html from the files the run saved.")
    r.add_argument("run_dir", metavar="RUN_DIR")
    r.set_defaults(func=_report)

    c = sub.add_parser("compare", help="runs side by side on one page",
                       description="Write one self-contained HTML page comparing run folders: "
                       "the settings that differ, final metrics, overlaid curves, each layer's "
                       "color_dim side by side on one colour scale, each run's diagnosis.")
    c.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    c.add_argument("--out", metavar="FILE", default="runs/compare.html",
                   help="the page to write (default: runs/compare.html)")
    c.set_defaults(func=_compare)

    h = sub.add_parser("chapter", help="replay chapter 13's five trainings, book beside us",
                       description="Train simple_cnn the five ways chapter 13 does, each as a "
                       "run folder under --out, and write chapter.html: the book's accuracy "
                       "beside convscope's, the color_dim the book shows, the diagnosis.")
    h.add_argument("--out", metavar="DIR", default="runs/chapter",
                   help="folder for the step run folders and chapter.html "
                   "(default: runs/chapter)")
    add_options(h, ("subset", "device"))  # as train declares them; --subset: a quick version
    h.add_argument("--overwrite", action="store_true",
                   help="replace step run folders an earlier replay left there")
    h.set_defaults(func=_chapter)

    pr = sub.add_parser("predict", help="classify image files with a trained run or an export",
                        description="Print, for each image (a folder: every image under it), "
                        "the class a trained run (or a file written by learn.export) predicts "
                        "and its probability, the image fed as training fed it.")
    pr.add_argument("source", metavar="RUN_OR_EXPORT")
    pr.add_argument("images", nargs="+", metavar="IMAGE")
    pr.add_argument("--top", type=positive_int, default=1, metavar="K",
                    help="the K most probable classes (default: 1)")
    pr.add_argument("--json", action="store_true", help="one JSON object per image")
    pr.add_argument("--model", metavar="FILE.py:FUNCTION",
                    help="the run's model, when it is a function of yours (it is run only "
                    "when named here)")
    pr.set_defaults(func=_predict)

    s = sub.add_parser("summary", help="per-layer shapes, parameters, MACs, receptive field")
    add_options(s, ("model", "widths", "first_ks"))  # as train declares them
    s.add_argument("--input", default="1x28x28", metavar="CxHxW",
                   help="input shape (default: 1x28x28)")
    s.add_argument("--classes", type=positive_int, metavar="N",
                   help="outputs (default: 10; book_first: 2, the chapter's 3s and 7s)")
    s.set_defaults(func=_summary)
    return parser


def _shape(text: str) -> tuple[int, int, int]:
    try:
        c, h, w = (int(v) for v in text.lower().split("x"))
        if min(c, h, w) < 1:
            raise ValueError
    except ValueError:
        raise UsageError(f"--input: expected CxHxW with positive integers, e.g. 1x28x28, "
                        f"received {text!r}") from None
    return c, h, w


def _kernel(args: argparse.Namespace) -> int:
    from pathlib import Path

    from convscope import plots
    from convscope.conv import KERNELS, conv2d_matmul, kernel
    from convscope.files import atomic_write_bytes

    k = kernel(args.kernel)  # raises with the list of names
    img, source = _image_or_digit(args)
    x = img.float() / 255  # (C, H, W)
    c = x.shape[0]

    def response(kern):  # the same kernel on every channel, summed: a (1, C, 3, 3) kernel
        return conv2d_matmul(x, kern.expand(1, c, *kern.shape))[0]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plots.show_filtered(x, response(k), args.kernel, save=out / f"{args.kernel}.png")
    plots.kernel_grid(x, {name: response(kv) for name, kv in KERNELS.items()},
                      save=out / "kernels.png")
    atomic_write_bytes(out / "kernel.txt", f"{source}\n{args.kernel}\n{k.tolist()}\n".encode())
    print(f"{source} ({c}x{x.shape[1]}x{x.shape[2]}) under {args.kernel}: "
          f"{out / (args.kernel + '.png')}, all kernels: {out / 'kernels.png'}; the image "
          f"and the kernel's weights: {out / 'kernel.txt'}")
    return 0


def _image_or_digit(args: argparse.Namespace):
    """(uint8 image (C, H, W), where it came from): IMAGE, or MNIST training digit --index."""
    from convscope.data import load_image, mnist

    if args.image:
        return load_image(args.image), args.image
    data = mnist()
    if args.index >= len(data.y_train):
        raise UsageError(f"--index: MNIST has {len(data.y_train)} training digits, "
                        f"received {args.index}")
    label = data.classes[int(data.y_train[args.index])]
    return data.x_train[args.index], f"MNIST training digit {args.index} (a {label})"


def _conv_sheet(args: argparse.Namespace) -> int:
    from convscope.conv import kernel
    from convscope.conv_sheet import image_for_sheet, write_conv_sheet

    names = args.kernel or ["top_edge", "left_edge"]
    if len(names) > 2:
        raise UsageError(f"--kernel: expected one or two kernel names (layer 1 has two), "
                        f"received {len(names)}: {' '.join(names)}")
    names = (names + ["left_edge"])[:2] if len(names) == 1 else names
    for name in names:
        kernel(name)  # raises with the list of names
    if not str(args.out).endswith(".xlsx"):
        raise UsageError(f"--out: expected a .xlsx file, received {args.out!r}")
    img, source = _image_or_digit(args)
    path = write_conv_sheet(args.out, image_for_sheet(img), source, tuple(names))
    print(f"wrote {path}: {source} through {names[0]} and {names[1]}, then a 2x3x3 kernel; "
          f"open it and trace the precedents of any conv3 cell (the notes sheet says how)")
    return 0


def _explore(args: argparse.Namespace) -> int:
    from pathlib import Path

    from convscope import run_folder
    from convscope.explore import write_explore

    img, source = _image_or_digit(args)
    out = Path(args.out) if args.out else Path(args.run_dir) / run_folder.EXPLORE
    print(f"wrote {write_explore(args.run_dir, out, img, source, args.model)}")
    return 0


def _conv_matrix(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from convscope import plots
    from convscope.conv import conv_matrix, conv_matrix_stats, conv_out_size

    ks, n = args.kernel, args.size
    if ks > n + 2 * args.padding:
        raise UsageError(f"--kernel {ks} does not fit a {n}x{n} image with padding "
                        f"{args.padding}; use --kernel <= {n + 2 * args.padding}")
    if ks * ks > 400 or n > 32:
        raise UsageError(f"--size {n} --kernel {ks} makes a matrix too big to draw; "
                        f"use --size <= 32 and --kernel <= 20")
    ids = conv_matrix(torch.arange(1.0, ks * ks + 1).view(ks, ks), (n, n), args.stride,
                      args.padding)
    ho = conv_out_size(n, ks, args.stride, args.padding)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plots.plot_conv_matrix(ids, (n, n), (ho, ho), save=out)
    st = conv_matrix_stats(torch.ones(ks, ks), (n, n), args.stride, args.padding)
    print(f"W: {st['rows']} x {st['cols']} ({ho}x{ho} outputs, {n}x{n} inputs); "
          f"{st['zero_share']:.1%} zeros; {st['weights']} distinct weights, each used "
          f"{st['uses_per_weight']:.2f} times on average; drawn to {out}")
    return 0


def _lr_find(args: argparse.Namespace) -> int:
    from pathlib import Path

    from convscope.config import TrainConfig
    from convscope.run import load_data, make_learner

    if args.start_lr >= args.end_lr:
        raise UsageError(f"--start-lr must be below --end-lr, received {args.start_lr} and "
                        f"{args.end_lr}")
    if args.num_it < 2:
        raise UsageError(f"--num-it: expected an integer >= 2, received {args.num_it}")
    cfg = TrainConfig(recipe=args.recipe, data=args.data, bs=args.bs, seed=args.seed,
                      size=args.size, subset=args.subset, device=args.device, stats=False)
    learn = make_learner(load_data(cfg), cfg, progress=False)
    found = learn.lr_find(args.start_lr, args.end_lr, args.num_it)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    found.plot(save=out)
    print(f"{found.describe()}; plot: {out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from convscope.report import build_report

    print(f"wrote {build_report(args.run_dir)}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from convscope.compare import write_compare

    print(f"wrote {write_compare(args.run_dirs, args.out)}")
    return 0


def _chapter(args: argparse.Namespace) -> int:
    from convscope.chapter import run_chapter

    page = run_chapter(args.out, subset=args.subset, device=args.device,
                       overwrite=args.overwrite)
    print(f"wrote {page}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    import json

    from convscope.inference import image_files, load_learner

    learn = load_learner(args.source, model=args.model)
    failed = 0
    for path in image_files(args.images):
        try:
            p = learn.predict(path)
        except UsageError as e:  # this image alone: the others are still predicted
            failed += 1
            print(f"convscope: error: {e}", file=sys.stderr, flush=True)
            continue
        top = p.top(args.top)
        if p.note:
            print(f"convscope: warning: {path}: {p.note}", file=sys.stderr, flush=True)
        if args.json:
            print(json.dumps({"file": str(path), "class": p.label, "index": p.index,
                              "probability": round(p.probability, 6),
                              "top": [{"class": c, "probability": round(v, 6)}
                                      for c, v in top]}), flush=True)
        else:
            print(f"{path}: " + ", ".join(f"{c} ({v:.1%})" for c, v in top), flush=True)
    if failed:
        print(f"convscope: error: {failed} image{'s' if failed != 1 else ''} could not be "
              f"read (above); the others were predicted", file=sys.stderr)
        return 2
    return 0


def _summary(args: argparse.Namespace) -> int:
    from convscope.config import BUILT_IN_MODELS, parse_widths
    from convscope.model_summary import summary
    from convscope.models import build_model

    shape = _shape(args.input)
    classes = args.classes or (2 if args.model == "book_first" else 10)
    model = build_model(args.model, shape[0], classes, widths=parse_widths(args.widths),
                        first_ks=args.first_ks)
    print(f"{args.model}: {BUILT_IN_MODELS.get(args.model, 'your function')}")
    print(summary(model, shape))
    return 0


def _train(args: argparse.Namespace) -> int:
    import os

    from convscope.errors import TrainingInterrupted
    from convscope.signals import deferred_interrupt

    with deferred_interrupt() as start:  # torch and the rest load here, whole or not at all
        from convscope import run_folder
        from convscope.config import TrainConfig
        from convscope.run import check_data, run_training
        from convscope.run.launch import Launch, LaunchFailed, launch
        from convscope.run.train import check_batches
    if start.asked:
        raise TrainingInterrupted("interrupted while starting up, before anything was "
                                  "written. Run the same command again.")

    given = {name: getattr(args, name) for name in TRAIN_OPTIONS if hasattr(args, name)}
    overwrite = getattr(args, "overwrite", False)
    if args.resume is not None:
        fixed = [options()[n].flag for n in given if not options()[n].resumable]
        fixed += ["--overwrite"] if overwrite else []
        if fixed:
            raise UsageError(f"--resume continues {args.resume} with the settings in its "
                             f"config.json; it takes no {', '.join(fixed)} (only --device and "
                             f"--nproc may change). Start a new run with another --out instead")
        cfg = run_folder.load_config(args.resume, **given)
    else:
        cfg = TrainConfig(**given)
    spec = Launch(cfg.nproc, args.nnodes, args.node_rank, args.rdzv_endpoint,
                  args.max_restarts, args.rdzv_timeout)
    if spec.several and "TORCHELASTIC_RUN_ID" not in os.environ:
        # checked here, before any process starts, so bad input is one line, not one a worker
        kind = check_data(cfg.data)
        if cfg.subset or kind == "mnist":  # the rest know their size once loaded
            check_batches(cfg.subset or 60000, cfg.bs, cfg.nproc * spec.nnodes)
        created = False
        if args.resume is None and spec.node_rank == 0:
            created = not os.path.exists(cfg.out)
            with run_folder.Lock(cfg.out, create=True):  # not while another process owns it
                run_folder.prepare(cfg.out, overwrite)
        try:
            return launch(spec, args.argv, cfg.out)
        except LaunchFailed as e:
            if created:  # a group that never started leaves no empty run folder behind
                run_folder.remove_if_empty(cfg.out)
            if e.exit_code != 2:  # 2: the workers said what they refused, one line each
                print(f"convscope: {e}", file=sys.stderr)
            return e.exit_code
    run_training(cfg, resume=args.resume is not None, overwrite=overwrite)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `convscope` command; returns the exit code.

    convscope's own errors (ConvscopeError: bad input, a damaged file, a run folder that
    cannot be used) are one line on stderr with exit code 2 (3 for a diverged run, 130 for
    Ctrl-C). Any other exception is a bug and keeps its traceback. CONVSCOPE_DEBUG=1 shows
    the traceback of every error.
    """
    import os

    from convscope.errors import TrainingDivergedError

    debug = os.environ.get("CONVSCOPE_DEBUG", "") not in ("", "0")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv
        return args.func(args)
    except (ConvscopeError, KeyboardInterrupt) as e:
        if debug:
            import traceback

            traceback.print_exc()
        if isinstance(e, KeyboardInterrupt):  # TrainingInterrupted says what to run next
            print(f"convscope: {str(e) or 'interrupted'}", file=sys.stderr)
            return 130
        if isinstance(e, TrainingDivergedError):
            print(f"convscope: {e}", file=sys.stderr)
            return e.exit_code
        print(f"convscope: error: {e}" if not str(e).startswith("convscope") else str(e),
              file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # output piped into `head` and closed: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # a full disk or a read-only folder: not a bug, one line
        import errno

        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                           errno.EPERM) or debug:
            raise
        print(f"convscope: error: cannot write {e.filename or 'a file'}: {e.strerror}; the "
              f"files written before are whole (writes are atomic)", file=sys.stderr)
        return 2


def run() -> NoReturn:
    """The `convscope` command: `main()`, then the process ends without tearing the
    interpreter down.

    By then every file is written and closed (atomically) and the output flushed; what is
    left is freeing the run's objects and running torch's and matplotlib's module finalisers,
    a visible wait on a small machine (bench/run_phases.py measures it) for nothing the user
    sees. Exit handlers registered with atexit still run.
    """
    import atexit
    import os

    code = main()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a closed pipe: nothing more can reach the reader
            pass
    os._exit(int(code or 0))


if __name__ == "__main__":
    run()
