"""User-facing errors.

Anything a user can cause (a bad config value, a missing file, a corrupt shard) is raised as a
``RaydeepError`` whose message is one line naming what and where. The CLI prints that line
and exits non-zero without a traceback (``--debug`` shows it).
"""

from __future__ import annotations


class RaydeepError(Exception):
    """An error the user can fix; its message is one complete line."""

    exit_code = 1


class ConfigError(RaydeepError):
    """A bad config file, key or value (exit code 2, raised before Ray starts)."""

    exit_code = 2


class DataError(RaydeepError):
    """A missing, empty, corrupt or mis-shaped data set."""

    exit_code = 2


class ResourceError(RaydeepError):
    """A run that cannot fit the cluster (or would starve Ray Data of CPU)."""

    exit_code = 2


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run, once its workers are stopped; the message says how to continue (exit 130)."""
