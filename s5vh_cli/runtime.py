"""Process-wide settings that must be made before PyTorch loads."""

from __future__ import annotations

import os
import sys


def prefer_passive_openmp() -> bool:
    """Let OpenMP workers sleep between parallel regions, for the commands that run the selective scan.

    PyTorch's OpenMP workers spin for a while after each operation; between an operation and one of the fused
    CPU scan kernels (numba's own threads) the spinning worker holds a core the kernel needs. Passive waiting
    made the 2-thread S5VH encoder 1.15x faster, but a CNN backbone 1.15-1.25x slower (docs/performance.md),
    so only `train` and `encode` ask for it. OpenMP reads the variable once, when torch loads: this does
    nothing if torch is already imported or the user set OMP_WAIT_POLICY. Returns whether it took effect.
    """
    if "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True
