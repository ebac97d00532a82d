"""etlverify: the deployment gate for ETL Plus.

The library is plain Python. Only `etlverify.pytest_plugin` imports pytest and only
`etlverify.locust_support` imports locust (see ARCHITECTURE.md).
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
