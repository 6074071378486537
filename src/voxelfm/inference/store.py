"""The embedding store: one safetensors file per volume plus an index table.

Layout of a store folder ``ROOT``::

    ROOT/embeddings/<safe id>.safetensors   tensors cls [C], patch [d,h,w,C], registers [R,C];
                                           header metadata {"voxelfm": JSON record}
    ROOT/embeddings/<safe id>.pth           optional reference layout {"cls": [1,C], "patch": [d,h,w,C]}
                                           (``voxelfm extract --format pth|both``); read as a fallback
                                           when there is no safetensors file (no registers, no record)
    ROOT/index/<writer>.jsonl               append-only status log, one JSON object per item
                                           (id, source, file, status ok|failed|skipped, error, ...)
    ROOT/index.csv                          consolidated table (rewritten atomically by
                                           :meth:`EmbeddingStore.write_index`)

Every embedding file is written atomically, so a file that exists is complete; the status log is
append-only, so several processes (``torchrun`` ranks, each using its own ``writer`` name) can fill
one store at once and the index merges by construction. The last record of an id wins.
Patch tokens are read lazily (memory-mapped) so probes never hold every grid in memory.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voxelfm.inference.features import Features
from voxelfm.utils.atomic import atomic_write, atomic_write_text
from voxelfm.utils.ids import safe_id
from voxelfm.utils.jsonl import append_jsonl, read_jsonl_folder

__all__ = ["EmbeddingStore"]

_INDEX_COLUMNS = ["id", "source", "file", "status", "error", "grid", "embed_dim", "seconds"]


class EmbeddingStore:
    """Read and write an embedding store folder (see module docstring).

    Args:
        root: the store folder (created on first write).
        writer: name of this process's status log (``index/<writer>.jsonl``); use one per rank.
    """

    def __init__(self, root: str | os.PathLike[str], *, writer: str = "main") -> None:
        self.root = Path(root)
        self.writer = safe_id(writer)
        self._records: dict[str, dict[str, Any]] | None = None

    # ------------------------------------------------------------------ paths
    def file_for(self, item_id: str) -> Path:
        """Path of the safetensors file of ``item_id`` (the id is sanitised)."""
        return self.root / "embeddings" / f"{safe_id(item_id)}.safetensors"

    # ------------------------------------------------------------------ writing
    def write(self, item_id: str, features: Features, *, source: str = "", seconds: float = 0.0,
              dtype: torch.dtype = torch.float32) -> Path:
        """Write ``features`` of ``item_id`` atomically and log it as ``ok``."""
        from safetensors.torch import save_file

        path = self.file_for(item_id)
        tensors = {
            "cls": features.cls.detach().to("cpu", dtype).contiguous(),
            "patch": features.patch.detach().to("cpu", dtype).contiguous(),
            "registers": features.registers.detach().to("cpu", dtype).contiguous(),
        }
        meta = {"id": item_id, "source": str(source),
                "patch_size_mm": list(map(float, features.patch_size_mm)),
                "record": features.record}
        with atomic_write(path) as tmp:
            save_file(tensors, str(tmp), metadata={"voxelfm": json.dumps(meta, default=str)})
        self._log({"id": item_id, "source": str(source), "file": str(path.relative_to(self.root)),
                   "status": "ok", "error": "", "grid": "x".join(map(str, features.grid)),
                   "embed_dim": features.embed_dim, "seconds": round(float(seconds), 3)})
        return path

    def pth_file_for(self, item_id: str) -> Path:
        """Path of the reference-layout ``.pth`` file of ``item_id`` (the id is sanitised)."""
        return self.root / "embeddings" / f"{safe_id(item_id)}.pth"

    def write_reference_pth(self, item_id: str, features: Features, *, log: bool = False,
                            source: str = "", seconds: float = 0.0) -> Path:
        """Write the reference layout ``<id>.pth`` = ``{"cls": [1,C], "patch": [d,h,w,C]}`` atomically.

        With ``log=True`` the item is also logged as ``ok`` with this file (a ``.pth``-only store).
        """
        path = self.pth_file_for(item_id)
        with atomic_write(path) as tmp:
            torch.save(features.to_reference_dict(), tmp)
        if log:
            self._log({"id": item_id, "source": str(source), "file": str(path.relative_to(self.root)),
                       "status": "ok", "error": "", "grid": "x".join(map(str, features.grid)),
                       "embed_dim": features.embed_dim, "seconds": round(float(seconds), 3)})
        return path

    def record_failure(self, item_id: str, *, source: str = "", error: str = "",
                       status: str = "failed") -> None:
        """Log that ``item_id`` failed (or was ``skipped``) with a one-line reason."""
        self._log({"id": item_id, "source": str(source), "file": "", "status": status,
                   "error": " ".join(str(error).split()), "grid": "", "embed_dim": "", "seconds": ""})

    def _log(self, record: dict[str, Any]) -> None:
        record = {**record, "time": time.time()}
        append_jsonl(self.root / "index" / f"{self.writer}.jsonl", record)
        if self._records is not None:
            self._records[record["id"]] = record

    def write_index(self) -> Path:
        """Rewrite ``index.csv`` from the status logs (atomic). Returns its path."""
        import csv
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=_INDEX_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for rec in self.records(refresh=True).values():
            w.writerow(rec)
        path = self.root / "index.csv"
        atomic_write_text(path, buf.getvalue())
        return path

    # ------------------------------------------------------------------ reading
    def records(self, *, refresh: bool = False) -> dict[str, dict[str, Any]]:
        """All status records, last one per id wins, in first-seen order."""
        if self._records is None or refresh:
            recs: dict[str, dict[str, Any]] = {}
            entries = [r for r in read_jsonl_folder(self.root / "index") if "id" in r]
            entries.sort(key=lambda r: r.get("time", 0.0))
            for rec in entries:
                recs[rec["id"]] = rec
            self._records = recs
        return self._records

    def status(self, item_id: str) -> str | None:
        """``"ok"``, ``"failed"``, ``"skipped"`` or ``None`` if never attempted."""
        rec = self.records().get(item_id)
        if rec is None:
            return None
        if rec["status"] == "ok":
            logged = self.root / rec["file"] if rec.get("file") else self.file_for(item_id)
            if not logged.exists():
                return None
        return rec["status"]

    def has(self, item_id: str) -> bool:
        """True if ``item_id`` has a complete embedding file (safetensors, or a reference ``.pth``)."""
        return self.file_for(item_id).exists() or self.pth_file_for(item_id).exists()

    @property
    def ids(self) -> list[str]:
        """Ids with a complete embedding, in the order they were written."""
        return [i for i, r in self.records().items() if r["status"] == "ok" and self.has(i)]

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and self.has(item_id)

    def _open(self, item_id: str):
        from safetensors import safe_open

        path = self.file_for(item_id)
        if not path.exists():
            raise KeyError(f"no embedding for id {item_id!r} in store {self.root}")
        return safe_open(str(path), framework="pt")

    def _load_pth(self, item_id: str) -> dict[str, torch.Tensor]:
        path = self.pth_file_for(item_id)
        if not path.exists():
            raise KeyError(f"no embedding for id {item_id!r} in store {self.root}")
        d = torch.load(path, map_location="cpu", weights_only=True)
        cls = d["cls"].reshape(-1).float()
        regs = d.get("registers")
        return {"cls": cls, "patch": d["patch"].float(),
                "registers": regs.float() if regs is not None else torch.zeros(0, cls.shape[0])}

    def load(self, item_id: str) -> Features:
        """Load all tokens of ``item_id`` as :class:`Features` (float32)."""
        if not self.file_for(item_id).exists() and self.pth_file_for(item_id).exists():
            t = self._load_pth(item_id)
            return Features(cls=t["cls"], patch=t["patch"], registers=t["registers"])
        with self._open(item_id) as f:
            meta = json.loads((f.metadata() or {}).get("voxelfm", "{}"))
            t = {k: f.get_tensor(k).float() for k in ("cls", "patch", "registers")}
        return Features(cls=t["cls"], patch=t["patch"], registers=t["registers"],
                        patch_size_mm=tuple(meta.get("patch_size_mm", [float("nan")] * 3)),
                        record=meta.get("record", {}))

    def load_tensor(self, item_id: str, key: str) -> torch.Tensor:
        """Load one tensor (``"cls"``, ``"patch"`` or ``"registers"``) of ``item_id``."""
        if key not in ("cls", "patch", "registers"):
            raise ValueError(f"key must be cls, patch or registers, got {key!r}")
        if not self.file_for(item_id).exists() and self.pth_file_for(item_id).exists():
            return self._load_pth(item_id)[key]
        with self._open(item_id) as f:
            return f.get_tensor(key).float()

    def matrix(self, ids: Sequence[str] | None = None, *, feature: str = "cls") -> np.ndarray:
        """Stack one vector per id into ``[N, C]`` float32.

        Args:
            ids: which ids (default: all ok ids).
            feature: ``"cls"``, ``"mean_patch"`` (mean of patch tokens), ``"mean_registers"``,
                or ``"cls+mean_patch"`` (concatenation, ``[N, 2C]``).
        """
        ids = self.ids if ids is None else list(ids)
        out = [self._vector(i, feature) for i in ids]
        if not out:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack(out).astype(np.float32, copy=False)

    def _vector(self, item_id: str, feature: str) -> np.ndarray:
        if feature == "cls":
            return self.load_tensor(item_id, "cls").numpy()
        if feature == "mean_patch":
            p = self.load_tensor(item_id, "patch")
            return p.reshape(-1, p.shape[-1]).mean(0).numpy()
        if feature == "mean_registers":
            return self.load_tensor(item_id, "registers").mean(0).numpy()
        if feature == "cls+mean_patch":
            return np.concatenate([self._vector(item_id, "cls"), self._vector(item_id, "mean_patch")])
        raise ValueError(f"unknown feature {feature!r}; use cls, mean_patch, mean_registers or cls+mean_patch")

    def iter_features(self, ids: Iterable[str] | None = None):
        """Yield ``(id, Features)`` lazily."""
        for i in (self.ids if ids is None else ids):
            yield i, self.load(i)
