"""Small helpers shared by all stages: atomic file writes, safe ids, progress bars, JSON files and
JSON-lines logs, process pools, thread defaults (:mod:`voxelfm.utils.threads`), lazy package exports."""

from voxelfm.utils.atomic import atomic_write, atomic_write_bytes, atomic_write_text
from voxelfm.utils.ids import safe_id
from voxelfm.utils.json_file import json_or_text, read_json_object
from voxelfm.utils.jsonl import append_jsonl, read_jsonl, read_jsonl_folder
from voxelfm.utils.lazy_exports import lazy_exports
from voxelfm.utils.pool import process_pool
from voxelfm.utils.progress import progress

__all__ = [
    "append_jsonl", "atomic_write", "atomic_write_bytes", "atomic_write_text", "json_or_text", "lazy_exports", "process_pool",
    "progress", "read_json_object", "read_jsonl", "read_jsonl_folder", "safe_id",
]
