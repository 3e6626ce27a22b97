"""The `cifarkit` command line: argparse subcommands mapped onto library functions.

Each handler only parses, calls one library function and prints; the notebook API and the CLI
share the same code path. User errors (`CifarkitError`) become one `error:` line and exit 2;
`--debug` shows the traceback. Heavy imports happen inside handlers so `--help` is instant.
"""

from __future__ import annotations

import argparse
import errno
import sys

from cifarkit import __version__
from cifarkit.errors import CifarkitError
from cifarkit.extras import extra_of_error


def _print_json(obj) -> None:
    from cifarkit.cli_use import json_line

    print(json_line(obj))


# ---- data -------------------------------------------------------------------------------------
def cmd_data_fetch(a: argparse.Namespace) -> int:
    """`cifarkit data fetch`: download and verify a dataset archive."""
    from cifarkit.data.fetch import fetch

    path = fetch(a.name, a.root, base_url=a.url)
    print(f"{path}: ready (md5 verified)")
    return 0


def cmd_data_inspect(a: argparse.Namespace) -> int:
    """`cifarkit data inspect`: describe batches, folders or manifests without decoding."""
    from cifarkit.data.inspect import format_inspect, inspect_path

    info = inspect_path(a.path)
    _print_json(info) if a.json else print(format_inspect(info))
    return 0


def cmd_data_show(a: argparse.Namespace) -> int:
    """`cifarkit data show`: draw a sample grid."""
    from cifarkit.data.show import show_grid
    from cifarkit.data.sources import load_dataset
    from cifarkit.safepath import check_apart, output_file

    check_apart(a.out, [a.path])  # a grid written among the images would become one of them
    output_file(a.out, overwrite=True)  # before the data is read
    ds = load_dataset(a.path, a.split)
    out = show_grid(ds, a.out, first=a.first, per_class=a.per_class)
    print(f"wrote {out}")
    return 0


def cmd_data_export(a: argparse.Namespace) -> int:
    """`cifarkit data export`: write image folders and manifest.csv."""
    from tqdm import tqdm

    from cifarkit.data.export import check_export_out, export_dataset
    from cifarkit.data.folder import manifest_splits, splits_of
    from cifarkit.data.sources import describe_kind, load_dataset
    from cifarkit.data.splits import check_imbalance_ratio, long_tail_train

    check_imbalance_ratio(a.imbalance_ratio, "--imbalance-ratio")  # before any reading
    check_export_out(a.out, a.overwrite, [a.path])  # the output place too: not the data, not another's files
    kind = describe_kind(a.path)
    if kind == "cifar":
        splits: list[str | None] = ["train", "test"]
    elif kind == "folder":
        splits = splits_of(a.path) or [None]  # a plain class folder is one split, "all"
    else:
        splits = manifest_splits(a.path) or [None]  # "" is a split too: its rows are not dropped
    data = {"all" if s is None else s: load_dataset(a.path, s) for s in splits}
    data = long_tail_train(data, a.imbalance_ratio, a.path)  # what data.imbalance_ratio R trains on
    with tqdm(total=sum(len(d) for d in data.values()), unit="img", disable=None) as bar:
        res = export_dataset(data, a.out, fmt=a.format, quality=a.quality, workers=a.workers,
                             overwrite=a.overwrite, progress=bar.update, png_level=6 if a.compress else 0,
                             inputs=[a.path])
    counts = ", ".join(f"{k} {v:,}" for k, v in res.counts.items())
    print(f"wrote {res.out} ({counts}) and {res.manifest}")
    return 0


def cmd_data_check(a: argparse.Namespace) -> int:
    """`cifarkit data check`: decode every image and report the unreadable ones; exit 1 if any."""
    from cifarkit.data.folder import check_files, splits_of
    from cifarkit.data.sources import describe_kind, list_files

    kind = describe_kind(a.path)
    if kind == "cifar":
        from cifarkit.data.inspect import inspect_path

        info = inspect_path(a.path)  # reading validates every batch
        print(f"{a.path}: OK, {info['total']:,} images in {len(info['batches'])} batches")
        return 0
    splits = ([a.split] if a.split else splits_of(a.path) or [None]) if kind == "folder" else [a.split]
    ok = True
    for s in splits:
        rep = check_files(list_files(a.path, s))
        label = f"{a.path}" + (f" [{s}]" if s else "")
        print(f"{label}: {rep.images:,} readable images, sizes "
              + ", ".join(f"{k}:{v}" for k, v in list(rep.sizes.items())[:8]))
        for _path, err in rep.unreadable:
            print(f"  unreadable: {err}")
        for c in rep.empty_classes:
            print(f"  empty class: {c}")
        if rep.non_images:
            print(f"  {len(rep.non_images)} non-image files ignored")
        if rep.outside:
            print(f"  {len(rep.outside)} links leading out of the folder ignored, e.g. {rep.outside[0]}")
        ok &= rep.ok
    if not ok:
        print("error: some images or classes are unusable (listed above); fix or remove them", file=sys.stderr)
    return 0 if ok else 1


# ---- entry point ------------------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    """argparse with the house rule for a wrong command line: one `error:` line (naming the option
    and where to look), exit 2; not a usage block followed by an error."""

    def error(self, message: str):  # type: ignore[override]
        """Print one `error:` line and exit 2."""
        self.exit(2, f"error: {self.prog}: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    """The `cifarkit` argument parser with every subcommand.

    The documentation's CLI reference is generated from it, so it always matches `--help`.
    """
    p = Parser(prog="cifarkit", description="From CIFAR batches to a trained, explained "
                                "image classifier.")
    p.add_argument("--version", action="version", version=f"cifarkit {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("data", help="fetch, inspect, show, export and check datasets")
    dsub = d.add_subparsers(dest="data_command", required=True)
    f = dsub.add_parser("fetch", help="download the official CIFAR archive (md5 verified)")
    f.add_argument("name", choices=["cifar10", "cifar100"])
    f.add_argument("--root", default="data", help="folder to download into (default: data)")
    f.add_argument("--url", default=None, help="mirror base URL (default: the dataset's home page)")
    f.set_defaults(fn=cmd_data_fetch)
    i = dsub.add_parser("inspect", help="batch files, shapes, class counts")
    i.add_argument("path")
    i.add_argument("--json", action="store_true")
    i.set_defaults(fn=cmd_data_inspect)
    s = dsub.add_parser("show", help="save a grid of sample images with class names")
    s.add_argument("path")
    s.add_argument("--out", required=True, help="image file: .png, .jpg, .pdf or .svg")
    s.add_argument("--split", default="train")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--first", type=int, default=None, help="the first N images (default 20)")
    g.add_argument("--per-class", type=int, default=None, help="N images of each class, a row per class")
    s.set_defaults(fn=cmd_data_show)
    e = dsub.add_parser("export", help="write split/<class>/<file> images and manifest.csv")
    e.add_argument("path")
    e.add_argument("out")
    e.add_argument("--format", default="png", choices=["png", "jpg"])
    e.add_argument("--quality", type=int, default=95, help="JPEG quality 1..100")
    e.add_argument("--workers", type=int, default=None)
    e.add_argument("--overwrite", action="store_true",
                   help="replace OUT when it holds an earlier export and nothing else")
    e.add_argument("--compress", action="store_true", help="deflate PNGs (~9%% smaller for CIFAR, ~3x slower)")
    e.add_argument("--imbalance-ratio", type=float, default=0.0, metavar="R",
                   help="write the train split cut to the long-tail profile of data.imbalance_ratio R (Cao et al. "
                        "2019: the first floor(n_max * R^(-i/(C-1))) images of class i; test untouched)")
    e.set_defaults(fn=cmd_data_export)
    c = dsub.add_parser("check", help="decode every image; exit 1 if anything is unusable")
    c.add_argument("path")
    c.add_argument("--split", default=None)
    c.set_defaults(fn=cmd_data_check)

    from cifarkit import cli_analysis, cli_train, cli_use

    cli_train.add_commands(sub)
    cli_analysis.add_commands(sub, dsub)
    cli_use.add_commands(sub)
    return p


# what to do about each kind of OS error on a path the user gave (an output folder, a file)
_OS_FIXES = {
    errno.EACCES: "choose a place you may write to, or fix its permissions",
    errno.EPERM: "choose a place you may write to, or fix its permissions",
    errno.EROFS: "the file system is read-only; choose another place",
    errno.ENOSPC: "the disk is full; free some space or choose another place",
    errno.EDQUOT: "the disk quota is used up; free some space or choose another place",
    errno.EEXIST: "something is already there (a file where a folder is needed?); choose another place",
    errno.EISDIR: "it is a folder; give a file name",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another place",
    errno.ENOENT: "check the path",
    errno.ENAMETOOLONG: "use a shorter name",
}


def os_error_line(e: OSError) -> str | None:
    """One line naming the path and what to do, for an OSError about a path (None without one:
    those are not about the user's input and keep their traceback)."""
    if e.filename is None:
        return None
    paths = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 is not None else "")
    fix = _OS_FIXES.get(e.errno or 0, "check the path")
    return f"{paths}: {e.strerror or type(e).__name__}; {fix}"


def main(argv: list[str] | None = None) -> int:
    """Run the `cifarkit` command line with `argv` (default `sys.argv[1:]`).

    Returns:
        The exit status: 0 on success, 2 for a `CifarkitError` (printed as one `error:` line),
        non-zero when a command did nothing.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    # a non-UTF-8 file name (lone surrogates in Python) prints as its own bytes on stdout, whatever
    # the locale (a pipe gets the name back as it is on disk) and escaped on stderr; never a traceback
    for stream, errors in ((sys.stdout, "surrogateescape"), (sys.stderr, "backslashreplace")):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors=errors)
    try:
        return int(args.fn(args) or 0)
    except CifarkitError as e:
        if args.debug:
            raise
        print("error: " + " ".join(str(e).splitlines()), file=sys.stderr)  # one line, whatever the message
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as e:  # a package of an optional extra, imported deep inside a step
        missing = extra_of_error(e)
        if missing is None or args.debug:
            raise
        print(f"error: {missing}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except OSError as e:  # a path the user named cannot be written or read (read-only, full, a file, ...)
        line = os_error_line(e)
        if line is None or args.debug:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
