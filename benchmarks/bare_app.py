"""A bare Starlette "hello" app: the ceiling the reference target's HTTP throughput is compared to.

One route, `GET /api/health`, answers `{"status": "healthy"}`. It runs on uvicorn with the very
settings `etlplus-reference serve` uses (see `src/etlplus_reference/serve.py`): one worker,
`loop`/`http` left at "auto" (uvloop and httptools when installed, as they are here), log level
warning, no access log, no proxy headers, no server header, lifespan on. Whatever the reference is
slower than this by is the cost of its own middleware and handlers, not of the framework or server.

Run it by hand with ``python benchmarks/bare_app.py --port 8099``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

if TYPE_CHECKING:
    from starlette.requests import Request

__all__ = ["create_app", "main", "uvicorn_config"]


async def health(_request: Request) -> JSONResponse:
    """The one route: a constant JSON body."""
    return JSONResponse({"status": "healthy"})


def create_app() -> Starlette:
    """The bare app: `GET /api/health` only."""
    return Starlette(routes=[Route("/api/health", health)])


def uvicorn_config(app: Starlette, host: str, port: int) -> uvicorn.Config:
    """A uvicorn config with the same settings as the reference's `serve` (minus its WS pings)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )


def main(argv: list[str] | None = None) -> int:
    """Serve the bare app until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    args = parser.parse_args(argv)
    server = uvicorn.Server(uvicorn_config(create_app(), args.host, args.port))
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    raise SystemExit(main())
