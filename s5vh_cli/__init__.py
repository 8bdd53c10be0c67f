"""s5vh: self-supervised video hashing (S5VH) and near-duplicate / semantic video retrieval."""

import os as _os

# OpenMP worker threads that spin after a parallel region hold a core for a while; on a small machine the fused
# CPU scan's own threads (numba) then wait for it at every hand-over between PyTorch operations and the
# kernels. Passive waiting removes that (measured, docs/performance.md). OpenMP reads the variable once, when
# the runtime loads, so it is set here, before torch; a value the user set wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
