"""The `cifarkit` command line: the parser assembled from the command groups, and the top-level
error handling (a user error, an interrupt, a missing extra or an OS error about a path the user
named becomes one `error:` line; `--debug` shows the traceback).

The commands live by group, each handler parsing its arguments into one library call (keywords
only) and printing the result; the notebook API and the CLI share the same code path:

- `cli.data`: data fetch, inspect, show, export, check, stats, audit;
- `cli.train`: models, train, tune, lr-find, configs;
- `cli.analysis`: eval, plot, analyze, calibrate, robustness, report;
- `cli.use`: predict, cam, export, serve, demo;
- `cli.options`: the option helpers and argparse types they share.

Heavy imports happen inside handlers so `--help` is instant.
"""

from __future__ import annotations

import argparse
import errno
import sys

from cifarkit import __version__
from cifarkit.cli import analysis, data, train, use
from cifarkit.errors import CifarkitError
from cifarkit.extras import extra_of_error

# the top-level commands in the order `cifarkit --help` lists them (after `data`)
COMMANDS = (train.add_models, train.add_train, train.add_tune, train.add_lr_find, analysis.add_eval,
            train.add_configs, use.add_demo, analysis.add_plot, analysis.add_analyze, analysis.add_calibrate,
            analysis.add_robustness, analysis.add_report, use.add_predict, use.add_cam, use.add_export,
            use.add_serve)


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

    data.add_commands(sub)
    for add in COMMANDS:
        add(sub)
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

