"""Process-wide settings that must be made before PyTorch loads."""

from __future__ import annotations

import os
import sys


def prefer_passive_openmp() -> bool:
    """Let OpenMP workers sleep between parallel regions, for the commands that run the selective scan.

    PyTorch's OpenMP workers spin for a while after each operation; between an operation and one of the fused
    CPU scan kernels (numba's own threads) the spinning worker holds a core the kernel needs. Passive waiting
    made the 2-thread S5VH encoder 1.15x faster. For a CNN backbone in torch it cost 13-20% on an idle machine
    (docs/performance.md) but multiplied throughput several times on shared cores, where spinning workers
    wait for a core another process holds (docs/extract.md), so `extract` and `query` ask for it too; the other
    backbone runtimes keep their own thread pools and are not affected. OpenMP reads the variable once, when
    torch loads: this does nothing if torch is already imported or the user set OMP_WAIT_POLICY. Returns
    whether it took effect.
    """
    if "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True
