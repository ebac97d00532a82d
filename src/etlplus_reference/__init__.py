"""The embedded ETL Plus reference target.

A real ASGI server (Starlette on uvicorn, SQLite persistence, rotating logs, WebSocket pushes) that
implements the ETL Plus contract (docs/etlplus-contract.md in the etlverify repository). The
verification suite never imports this package: it reaches it over HTTP/WebSocket and through the
deployment folder, exactly as it reaches a deployed C++ ETL Plus.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "2.4.0-reference"
