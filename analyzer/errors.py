# Domain errors and the exit codes the CLI maps them to.  The CLI turns any
# AnalyzerError into one line on stderr; anything else escaping is a bug.
from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Documented in README ("Exit codes"); scripts rely on these numbers."""

    OK = 0
    ERROR = 1             # unexpected internal error (a bug: please report)
    USAGE = 2             # bad command line (argparse's own convention)
    INPUT = 3             # a capture could not be opened / is not a capture
    DAMAGED = 4           # a capture was truncated or corrupt; events read before it were written
    THRESHOLD = 5         # --fail-on threshold crossed
    PERMISSION = 6        # live capture without privilege
    MISSING_TOOL = 7      # tshark (or another external tool) is not installed
    OUTPUT = 8            # the outputs cannot be written (-o is a file, no permission, disk full)
    CLUSTER = 9           # --cluster: the scheduler cannot be reached, or the cluster lost the run
    INTERRUPTED = 130     # SIGINT (Ctrl-C): what was read is written, marked partial (128 + 2)
    TERMINATED = 143      # SIGTERM: the same, for the other stop signal (128 + 15)


class AnalyzerError(Exception):
    exit_status = ExitStatus.ERROR


class UsageError(AnalyzerError):
    exit_status = ExitStatus.USAGE


class InputError(AnalyzerError):
    """The file cannot be read at all, or is not a capture."""

    exit_status = ExitStatus.INPUT


class CaptureError(AnalyzerError):
    """The capture is damaged part-way: packets before `packets_read` are good."""

    exit_status = ExitStatus.DAMAGED

    def __init__(self, message: str, packets_read: int = 0) -> None:
        super().__init__(message)
        self.packets_read = packets_read


class PermissionDenied(AnalyzerError):
    exit_status = ExitStatus.PERMISSION


class MissingTool(AnalyzerError):
    exit_status = ExitStatus.MISSING_TOOL


class ClusterError(AnalyzerError):
    """--cluster: the scheduler cannot be reached (within the connect timeout), or the
    run was lost (the scheduler went away, workers kept dying on one task)."""

    exit_status = ExitStatus.CLUSTER


class OutputError(AnalyzerError):
    """The output folder cannot be made or written; the previous outputs are left as they were."""

    exit_status = ExitStatus.OUTPUT
