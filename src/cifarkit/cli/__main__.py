"""`python -m cifarkit.cli` is the same as the `cifarkit` console script."""

from cifarkit.cli import main

raise SystemExit(main())
