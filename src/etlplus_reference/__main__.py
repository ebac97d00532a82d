"""`python -m etlplus_reference`: the `etlplus-reference` command line."""

from __future__ import annotations

from etlplus_reference.cli import main

raise SystemExit(main())
