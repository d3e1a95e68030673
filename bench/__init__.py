"""MedMNIST-Bench: distributed hyperparameter search and honest benchmarking on MedMNIST."""

import os
import sys


def _openmp_wait_policy() -> str | None:
    """OMP_WAIT_POLICY for this process, chosen before anything imports torch (OpenMP reads it
    once, when torch loads); None keeps OpenMP's default.

    Why: OpenMP threads that finish an op first spin at the barrier. On a machine with more busy
    threads than cores (Ray trials side by side) the spinning threads hold the cores the
    working ones need, and every small op stalls; on an idle machine spinning is the faster
    choice (`medbench perf` measured both; numbers in reports/archive/measured-in-code.md).
    So PASSIVE is chosen only in Ray workers, which usually share their node with other
    trials, and when the machine is already busier than its cores. A policy the user set is
    always kept."""
    if "OMP_WAIT_POLICY" in os.environ:
        return None
    if os.path.basename(sys.argv[0] if sys.argv else "") == "default_worker.py":  # a Ray worker
        return "PASSIVE"
    try:
        busy = os.getloadavg()[0] >= (os.cpu_count() or 1)
    except OSError:  # no load average on this platform
        busy = False
    return "PASSIVE" if busy else None


_policy = _openmp_wait_policy()
if _policy:
    os.environ["OMP_WAIT_POLICY"] = _policy

__version__ = "0.1.0"
