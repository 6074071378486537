"""Resumable pre-training checkpoints: atomic, last-n kept, loaded with ``weights_only=True``.

Layout inside a run folder::

    checkpoints/step_0000100.pth      # resumable state (newest n kept)
    checkpoints/keep/step_0005000.pth # permanent copies every ``checkpointing.keep_every`` steps

A checkpoint is a dict of tensors and plain Python values only::

    {"format": "voxelfm-ssl", "version": 1, "iteration": step,
     "model": SSLMetaArch.state_dict(),      # student.*, teacher.*, dino_loss.center, ibot_patch_loss.center
     "optimizer": AdamW.state_dict(), "rng": [per-rank RNG states], "sampler": {...},
     "schedules": {...}, "config": "<resolved YAML>", "world_size": w, ...}

``model`` uses the reference training-checkpoint key layout (``teacher.backbone.*``), so
:func:`voxelfm.load_backbone` loads the teacher straight from a checkpoint or from the run folder.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voxelfm.errors import CheckpointError
from voxelfm.utils import atomic_write

__all__ = ["CHECKPOINT_DIR", "checkpoint_path", "list_checkpoints", "find_latest_checkpoint",
           "save_checkpoint", "load_checkpoint", "keep_last_n_checkpoints", "capture_rng_state",
           "restore_rng_state"]

logger = logging.getLogger("voxelfm.ssl")

CHECKPOINT_DIR = "checkpoints"
_NAME_RE = re.compile(r"^step_(\d+)\.pth$")


def checkpoint_path(run_dir: str | os.PathLike[str], step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{int(step):07d}.pth"


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``[(step, path)]`` of the resumable checkpoints, oldest first (temp files ignored)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_file() and (m := _NAME_RE.match(p.name))]
    return sorted(found)


def find_latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    items = list_checkpoints(run_dir)
    return items[-1][1] if items else None


def save_checkpoint(run_dir: str | os.PathLike[str], step: int, state: dict[str, Any], *,
                    max_to_keep: int | None = 3, keep_every: int | None = None) -> Path:
    """Write ``state`` for ``step`` atomically (temp file + rename); prune old ones.

    Args:
        run_dir: the run folder.
        step: optimizer steps done.
        state: tensors and plain Python values only (``weights_only`` loadable).
        max_to_keep: newest checkpoints kept (``None``/0 = all).
        keep_every: also keep a permanent copy every this many steps (in ``checkpoints/keep``).
    """
    path = checkpoint_path(run_dir, step)
    with atomic_write(path) as tmp:
        torch.save(state, tmp)
    if keep_every and step % int(keep_every) == 0:
        keep = path.parent / "keep" / path.name
        keep.parent.mkdir(parents=True, exist_ok=True)
        try:
            if keep.exists():
                keep.unlink()
            os.link(path, keep)
        except OSError:
            shutil.copy2(path, keep)
    if max_to_keep:
        keep_last_n_checkpoints(run_dir, int(max_to_keep))
    return path


def keep_last_n_checkpoints(run_dir: str | os.PathLike[str], n: int) -> None:
    for _, p in list_checkpoints(run_dir)[:-n] if n > 0 else []:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` on CPU."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - one clear message for a corrupt / foreign file
        raise CheckpointError(f"{path}: cannot read this pre-training checkpoint ({exc}); delete it "
                              "to resume from the previous one") from None
    if not isinstance(state, dict) or state.get("format") != "voxelfm-ssl":
        raise CheckpointError(f"{path}: not a voxelfm pre-training checkpoint")
    return state


# ----------------------------------------------------------------------------- RNG states
def capture_rng_state() -> dict[str, Any]:
    """torch (CPU + CUDA), numpy (legacy global) and Python ``random`` states as tensors/plain types."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(np_state[0]), "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_version), "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].to(torch.uint8))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), int(n["pos"]),
                         int(n["has_gauss"]), float(n["cached_gaussian"])))
    p = state["python"]
    random.setstate((int(p["version"]), tuple(int(x) for x in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
