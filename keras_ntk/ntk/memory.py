"""Memory budgets and the error raised when an NTK request cannot fit."""

import os


class NTKMemoryError(MemoryError):
    """A kernel request needs more memory than its budget; raised before any work."""


def available_bytes():
    """Memory the OS can give this process now (MemAvailable), in bytes."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def default_budget():
    """Half of the currently available host memory (override: KERAS_NTK_MEMORY_BUDGET)."""
    if "KERAS_NTK_MEMORY_BUDGET" in os.environ:
        return int(float(os.environ["KERAS_NTK_MEMORY_BUDGET"]))
    return available_bytes() // 2


def gib(n_bytes):
    return f"{n_bytes / 2**30:.3g} GiB"
