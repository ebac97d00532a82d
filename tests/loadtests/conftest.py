"""Importing locust monkey-patches the whole process with gevent unless this is set; the project's
other tests (asyncio servers, threads) must not run patched. Locust subprocesses started by these
tests get an environment without it (see `test_locust_gate.locust_env`)."""

from __future__ import annotations

import os

os.environ.setdefault("LOCUST_SKIP_MONKEY_PATCH", "1")
