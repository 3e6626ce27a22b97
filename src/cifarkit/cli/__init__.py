"""The `cifarkit` command line (`cifarkit.cli:main` is the console script): `main` assembles the parser
and handles errors; `data`, `train`, `analysis` and `use` hold one command group each; `options`
the option helpers they share."""

from cifarkit.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
