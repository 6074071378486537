"""Exception types shared by every stage of voxelfm.

Every error a user can cause derives from :class:`VoxelFMError`; the CLI prints these as one line
(``voxelfm: error: ...``) and exits non-zero instead of showing a traceback.
"""

from __future__ import annotations

__all__ = ["VoxelFMError", "VolumeReadError", "CheckpointError", "ConfigError"]


class VoxelFMError(Exception):
    """Base class of all errors voxelfm raises on purpose (bad input, bad configuration)."""


class VolumeReadError(VoxelFMError, ValueError):
    """A CT volume could not be read. The message names the file and the reason.

    Args:
        path: the file or folder that failed.
        reason: what is wrong and, where possible, what to do about it.
    """

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class CheckpointError(VoxelFMError, ValueError):
    """Weights could not be loaded (unknown format, missing/unexpected keys, shape mismatch)."""


class ConfigError(VoxelFMError, ValueError):
    """A configuration file or option is invalid."""
