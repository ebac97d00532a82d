"""Operations subcommands of the reference target: `monitor` (monitoring script) and `rollback`.

`common` holds what both share (errors, lenient settings, the pid file, the server URL). The
deployment's `monitoring/monitor.sh` and `deployment/rollback.sh` call these through the CLI.
"""

from __future__ import annotations

__all__: list[str] = []
