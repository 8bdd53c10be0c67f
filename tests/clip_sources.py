"""Stand-ins for the real source clips of the copy-detection builder (the real ones need
benchmarks/fetch_assets.sh): a smooth random texture that scrolls sideways."""

from __future__ import annotations

import numpy as np


def fake_clip(path, seconds: float, fps: float, seed: int, size=(96, 72), shift: int = 1) -> None:
    """Write an mp4v clip of ``seconds`` at ``fps``, scrolling ``shift`` pixels per frame."""
    import cv2

    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 255, (9, 12, 3)).astype(np.uint8), size, interpolation=cv2.INTER_CUBIC)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for t in range(int(seconds * fps)):
        vw.write(np.roll(base, shift * t, axis=1))
    vw.release()
