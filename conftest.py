"""The etlverify pytest plugin is a `pytest11` entry point (pyproject.toml): installed, it is loaded
before pytest reads the command line, so nothing needs registering here."""
