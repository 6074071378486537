"""Small helpers shared by all stages: atomic file writes, safe ids, progress bars, threads."""

from voxelfm.utils.atomic import atomic_write, atomic_write_bytes, atomic_write_text
from voxelfm.utils.ids import safe_id
from voxelfm.utils.progress import progress

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "safe_id", "progress"]
