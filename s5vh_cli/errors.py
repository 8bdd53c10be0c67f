"""Typed errors. The core raises these with a one-line message; the CLI prints it and exits 2."""

from __future__ import annotations


class S5VHError(Exception):
    """Base class: ``str(err)`` is a complete one-line message meant for the user."""

    exit_code = 2


class InputError(S5VHError):
    """A user-supplied file, folder or option is unusable."""


class ArtifactError(S5VHError):
    """An HDF5 artifact, checkpoint or index is missing, from the wrong stage, or damaged."""


class VideoError(InputError):
    """A video cannot be opened or decoded."""


class BackendError(S5VHError):
    """A requested compute backend (selective scan, device) is not available."""


class MismatchError(S5VHError):
    """Two artifacts do not belong together (bit lengths, models, feature sizes, frame counts)."""
