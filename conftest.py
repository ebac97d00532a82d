"""Manifest: the plugins this checkout runs with, and nothing else."""

pytest_plugins = ["etlverify.pytest_plugin"]
