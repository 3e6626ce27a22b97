"""What `cifarkit train` writes once a run has finished: curves.png and report.html.

The engine does not draw: `fit(after_run=...)` calls these with the run directory, and the CLI
(and the demo) pass them when `log.plots` is on, so `import cifarkit; fit(cfg)` stays cheap. A
failure here only warns, since a figure must never cost the user their finished run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from cifarkit.analysis.curves import plot_runs
from cifarkit.analysis.report import write_report
from cifarkit.errors import CifarkitError


def write_curves(run_dir: Path, quiet: bool = False) -> None:
    """Draw the run's training curves into `run_dir/curves.png`; a failure only prints a warning.

    `quiet` drops the `wrote ...` line."""
    _warn_on_failure("curves", lambda: plot_runs([run_dir], run_dir / "curves.png"), quiet)


def write_run_report(run_dir: Path, quiet: bool = False) -> None:
    """Write the run's HTML report (`run_dir/report.html`); a failure only prints a warning.

    `quiet` drops the `wrote ...` line."""
    _warn_on_failure("report", lambda: write_report(run_dir), quiet)


def _warn_on_failure(what: str, make: Callable[[], Path], quiet: bool) -> None:
    try:
        out = make()
        if not quiet:
            print(f"wrote {out}")
    except (CifarkitError, OSError, ValueError) as e:
        print(f"warning: {what} not written: {e}", file=sys.stderr)


def plot_writers(plots: bool, quiet: bool = False) -> list[Callable[[Path], None]]:
    """The after_run list for `log.plots`: curves then report (which embeds the curves)."""
    if not plots:
        return []
    return [lambda run: write_curves(run, quiet), lambda run: write_run_report(run, quiet)]
