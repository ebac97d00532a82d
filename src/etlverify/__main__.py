"""`python -m etlverify ...`: the `etlverify` command."""

from etlverify.cli import main

raise SystemExit(main())
