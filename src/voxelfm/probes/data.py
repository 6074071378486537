"""Joining embeddings to labels, lazy token access, and padding collation for probes.

Features a probe can read from an :class:`~voxelfm.inference.store.EmbeddingStore`:

==================  =========================================================  ==================
name                what                                                       kind
==================  =========================================================  ==================
``cls``             the CLS token ``[C]``                                      vector
``mean_patch``      mean of the patch tokens ``[C]``                           vector
``cls+mean_patch``  concatenation ``[2C]``                                     vector
``registers``       register tokens: their mean ``[C]`` for vector heads, the  vector / tokens
                    set ``[R, C]`` for token heads
``patch``           patch tokens ``[d·h·w, C]`` on their grid (lazy)           tokens
==================  =========================================================  ==================

Vector features are small and stacked once into a matrix. Patch tokens are read lazily, one
volume at a time, through a small byte-bounded LRU cache (:class:`TokenSource`), so a probe over
thousands of large grids never holds them all in memory. :func:`pad_collate` pads variable-sized
token sets of a batch to ``[B, T_max, C]`` with a validity mask and per-token relative
coordinates.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from voxelfm.probes.splits import check_splits, make_splits, normalise_split_names

__all__ = [
    "FEATURES", "TOKEN_FEATURES", "VECTOR_FEATURES", "GridDataset", "PaddedTokens", "TokenDataset", "TokenSource",
    "VectorDataset",
    "feature_matrix", "join_labels", "pad_collate", "read_label_table", "stack_collate", "token_coords",
]

VECTOR_FEATURES: tuple[str, ...] = ("cls", "mean_patch", "cls+mean_patch", "registers")
TOKEN_FEATURES: tuple[str, ...] = ("patch", "registers")
FEATURES: tuple[str, ...] = ("cls", "patch", "mean_patch", "registers", "cls+mean_patch")


# --------------------------------------------------------------------------- label tables
def read_label_table(labels: str | os.PathLike[str] | pd.DataFrame, *, id_col: str = "id") -> pd.DataFrame:
    """Read a label table (CSV, TSV, Parquet or a DataFrame) with ids as strings.

    Ids are always strings (the reference dropped numeric-looking UIDs because its label maps did
    not cast them). Duplicate ids are an error.
    """
    if isinstance(labels, pd.DataFrame):
        df = labels.copy()
    else:
        path = Path(labels)
        if not path.exists():
            raise FileNotFoundError(f"label table {path} does not exist")
        suffix = path.suffix.lower()
        if suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        elif suffix in (".tsv", ".tab"):
            df = pd.read_csv(path, sep="\t", dtype={id_col: str})
        else:
            df = pd.read_csv(path, dtype={id_col: str})
        df.attrs["source"] = str(path)
    if id_col not in df.columns:
        raise ValueError(f"label table has no id column {id_col!r} (columns: {', '.join(map(str, df.columns[:12]))}); "
                         "pass id_col=...")
    df[id_col] = df[id_col].astype(str).str.strip()
    dup = df[id_col][df[id_col].duplicated()]
    if len(dup):
        raise ValueError(f"label table has duplicate ids, e.g. {list(dup.iloc[:3])}")
    return df


def join_labels(store_ids: Sequence[str], labels: pd.DataFrame, columns: Sequence[str], *,
                id_col: str = "id", split_col: str | None = "split", patient_col: str | None = "patient_id",
                stratify_col: str | None = None, seed: int = 4, dropna: bool = True,
                split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> pd.DataFrame:
    """Join a label table to the ids present in an embedding store and settle the splits.

    Args:
        store_ids: ids with embeddings.
        labels: table from :func:`read_label_table`.
        columns: label columns the task needs (checked to exist).
        id_col, split_col, patient_col: column names. If ``split_col`` is missing from the table
            (or ``None``), patient-grouped splits are made with ``seed`` (stratified by
            ``stratify_col`` when given). If ``patient_col`` is missing, each id is its own patient.
        dropna: drop rows whose label columns are all missing (e.g. scans without a nodule in a
            localisation task); rows with some labels missing are kept (multi-label tasks mask them).

    Returns:
        DataFrame indexed by id (store order) with ``split``, ``patient`` and the label columns.
    """
    missing = [c for c in columns if c not in labels.columns]
    if missing:
        raise ValueError(f"label table has no column {missing[0]!r} (columns: "
                         f"{', '.join(map(str, labels.columns[:15]))})")
    table = labels.set_index(id_col, drop=False)
    present = [i for i in store_ids if i in table.index]
    n_unlabelled = len(store_ids) - len(present)
    n_unembedded = len(table) - len(present)
    if not present:
        raise ValueError(f"none of the {len(table)} label ids is in the embedding store "
                         f"({len(store_ids)} ids, e.g. {list(store_ids[:2])}); check id_col")
    if n_unembedded:
        warnings.warn(f"{n_unembedded} labelled id(s) have no embedding and are skipped", stacklevel=2)
    del n_unlabelled
    df = table.loc[present, list(columns)].copy()
    df.index = pd.Index(present, name="id")
    df["patient"] = (table.loc[present, patient_col].astype(str).to_numpy()
                     if patient_col and patient_col in table.columns else present)
    if dropna and len(columns):
        keep = df[list(columns)].notna().any(axis=1)
        if (~keep).sum():
            warnings.warn(f"{int((~keep).sum())} id(s) have no label in {list(columns)} and are skipped",
                          stacklevel=2)
        df = df[keep]
    if split_col and split_col in table.columns:
        df["split"] = normalise_split_names(table.loc[df.index, split_col]).to_numpy()
        check_splits(df["split"], df["patient"])
    else:
        strata = None
        if stratify_col is not None:
            strata = df[stratify_col].astype(str).to_numpy()
        df["split"] = make_splits(list(df.index), groups=list(df["patient"]), stratify=strata,
                                  fractions=split_fractions, seed=seed).to_numpy()
    for name in ("train", "val", "test"):
        if not (df["split"] == name).any():
            raise ValueError(f"the {name} split is empty after joining labels to embeddings "
                             f"({len(df)} labelled ids with embeddings)")
    return df


# --------------------------------------------------------------------------- features
def feature_matrix(store: Any, ids: Sequence[str], feature: str) -> np.ndarray:
    """One vector per id, ``[N, C]`` float32, for a vector feature (see module table)."""
    if feature not in VECTOR_FEATURES:
        raise ValueError(f"feature {feature!r} is not a vector feature; use one of {', '.join(VECTOR_FEATURES)} "
                         "(patch tokens need a token head: attentive, localisation, segmentation)")
    name = "mean_registers" if feature == "registers" else feature
    x = store.matrix(list(ids), feature=name)
    if feature == "registers" and x.size and not np.isfinite(x).all():
        raise ValueError("the store has no register tokens (R = 0); use feature=cls or mean_patch")
    return np.ascontiguousarray(x, dtype=np.float32)


class TokenSource:
    """Lazy access to the token set of each id, with a byte-bounded LRU cache.

    Args:
        store: an :class:`~voxelfm.inference.store.EmbeddingStore`.
        feature: ``"patch"`` (``[d·h·w, C]`` with grid ``(d, h, w)``) or ``"registers"``
            (``[R, C]``, grid ``(R, 1, 1)``).
        cache_mb: cache budget in MiB (0 disables caching).
    """

    def __init__(self, store: Any, feature: str = "patch", *, cache_mb: float = 256.0) -> None:
        if feature not in TOKEN_FEATURES:
            raise ValueError(f"token feature must be one of {TOKEN_FEATURES}, got {feature!r}")
        self.store = store
        self.feature = feature
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache: OrderedDict[str, tuple[torch.Tensor, tuple[int, int, int]]] = OrderedDict()
        self._used = 0
        self.dense_bytes = 0  # memory held by datasets' padded tensors (same budget, see PaddedTokens)
        self.loads = 0  # number of reads from disk (for tests and diagnostics)

    def read(self, item_id: str) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Like :meth:`get` but without caching (a cached copy is used if there is one)."""
        hit = self._cache.get(item_id)
        if hit is not None:
            return hit
        t = self.store.load_tensor(item_id, self.feature)
        self.loads += 1
        if self.feature == "patch":
            grid = (int(t.shape[0]), int(t.shape[1]), int(t.shape[2]))
            t = t.reshape(-1, t.shape[-1])
        else:
            if t.shape[0] == 0:
                raise ValueError(f"id {item_id!r} has no register tokens; use feature=patch")
            grid = (int(t.shape[0]), 1, 1)
        return t.contiguous(), grid

    def get(self, item_id: str) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """``(tokens [T, C] float32, grid (d, h, w))`` of ``item_id``."""
        hit = self._cache.get(item_id)
        if hit is not None:
            self._cache.move_to_end(item_id)
            return hit
        t, grid = self.read(item_id)
        size = t.numel() * t.element_size()
        budget = self.cache_bytes - self.dense_bytes  # padded copies share the budget
        if 0 < size <= budget:
            self._cache[item_id] = (t, grid)
            self._used += size
            while self._used > budget:
                _, (old, _) = self._cache.popitem(last=False)
                self._used -= old.numel() * old.element_size()
        return t, grid

    def grid(self, item_id: str) -> tuple[int, int, int]:
        return self.get(item_id)[1]

    def embed_dim(self, item_id: str) -> int:
        return int(self.get(item_id)[0].shape[-1])

    def __getstate__(self) -> dict[str, Any]:  # workers start with an empty cache
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        state["_used"] = 0
        return state


def token_coords(grid: Sequence[int], convention: str = "centre") -> torch.Tensor:
    """Relative (z, y, x) position of every token of a ``(d, h, w)`` grid, ``[d·h·w, 3]``.

    ``"centre"``: the centre of patch ``i`` of ``n`` is ``(i + 0.5) / n`` — the same coordinate as a
    voxel target ``(v + 0.5) / size`` on the model-input grid. ``"corner"`` (the reference):
    ``linspace(0, 1, n)``, first patch 0 and last patch 1.
    """
    axes = []
    for n in grid:
        n = int(n)
        if convention == "centre":
            axes.append((torch.arange(n, dtype=torch.float32) + 0.5) / n)
        elif convention == "corner":
            axes.append(torch.linspace(0, 1, n) if n > 1 else torch.zeros(1))
        else:
            raise ValueError(f"position convention must be 'centre' or 'corner', got {convention!r}")
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([zz, yy, xx], dim=-1).reshape(-1, 3)


# --------------------------------------------------------------------------- datasets
class VectorDataset(torch.utils.data.Dataset):
    """``x [N, C]`` vectors with targets ``y [N, ...]``; items are dicts ``{x, y, index}``."""

    kind = "vector"

    def __init__(self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> None:
        self.x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        self.y = torch.as_tensor(np.asarray(y))
        if len(self.x) != len(self.y):
            raise ValueError("x and y must have the same length")

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.x[i], "y": self.y[i], "index": i}


class PaddedTokens:
    """All token sets of a dataset padded once into dense tensors, so a batch is an index gather
    instead of a per-item read + pad (the collation cost more than the head for small heads).

    Attributes:
        x: ``[N, T_max, C]`` tokens (zeros on padding); mask: ``[N, T_max]`` True = real token;
        coords: ``[N, T_max, 3]`` relative token positions (0 on padding); lengths: ``[N]``;
        grid: ``[N, 3]``.
    """

    def __init__(self, source: TokenSource, ids: Sequence[str], convention: str) -> None:
        items = [source.read(i) for i in ids]
        lengths = [int(t.shape[0]) for t, _ in items]
        n, t_max, c = len(items), max(lengths), int(items[0][0].shape[-1])
        self.x = torch.zeros(n, t_max, c, dtype=torch.float32)
        self.mask = torch.zeros(n, t_max, dtype=torch.bool)
        self.coords = torch.zeros(n, t_max, 3, dtype=torch.float32)
        coords_of: dict[tuple[int, int, int], torch.Tensor] = {}
        for k, (t, grid) in enumerate(items):
            m = lengths[k]
            self.x[k, :m] = t
            self.mask[k, :m] = True
            if grid not in coords_of:
                coords_of[grid] = token_coords(grid, convention)
            self.coords[k, :m] = coords_of[grid]
        self.lengths = torch.tensor(lengths, dtype=torch.long)
        self.grid = torch.tensor([list(g) for _, g in items], dtype=torch.long)
        self.convention = convention

    @staticmethod
    def nbytes(source: TokenSource, ids: Sequence[str]) -> int:
        """Memory the padded tensors of ``ids`` would take (patch shapes from the file headers)."""
        t_max = c = 0
        for i in ids:
            shape = _token_shape(source.store, i) if source.feature == "patch" else None
            if shape is None:
                t, _ = source.read(i)
                shape = (int(t.shape[0]), int(t.shape[1]))
            t_max, c = max(t_max, shape[0]), shape[1]
        return len(ids) * t_max * (4 * c + 1 + 12)  # tokens, mask, coordinates

    def batch(self, idx: Sequence[int], y: torch.Tensor) -> dict[str, Any]:
        """The batch of items ``idx``, padded to the longest of *these* items (not the dataset's)."""
        t = torch.as_tensor(list(idx), dtype=torch.long)
        t_b = int(self.lengths[t].max())
        return {"x": self.x[t, :t_b], "mask": self.mask[t, :t_b], "coords": self.coords[t, :t_b],
                "grid": self.grid[t], "y": y[t], "index": t}


def _token_shape(store: Any, item_id: str) -> tuple[int, int] | None:
    """``(d·h·w, C)`` of the patch tokens from the safetensors header (None if unavailable)."""
    file_for = getattr(store, "file_for", None)
    if file_for is None or not file_for(item_id).exists():
        return None
    from safetensors import safe_open

    with safe_open(str(file_for(item_id)), framework="pt") as fh:
        shape = fh.get_slice("patch").get_shape()
    return int(np.prod(shape[:-1])), int(shape[-1])


class TokenDataset(torch.utils.data.Dataset):
    """Token sets read lazily from a :class:`TokenSource`; items ``{x [T, C], grid, y, index}``.

    :meth:`padded` gives all items as dense padded tensors (:class:`PaddedTokens`) when they fit in
    what is left of the source's memory budget (``cache_mb``), else ``None`` (then batches are read
    and padded item by item through the source's LRU cache).
    """

    kind = "tokens"

    def __init__(self, source: TokenSource, ids: Sequence[str], y: np.ndarray | torch.Tensor) -> None:
        self.source = source
        self.ids = list(ids)
        self.y = torch.as_tensor(np.asarray(y))
        if len(self.ids) != len(self.y):
            raise ValueError("ids and y must have the same length")
        self._padded: dict[str, PaddedTokens | None] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        x, grid = self.source.get(self.ids[i])
        return {"x": x, "grid": grid, "y": self.y[i], "index": i}

    def padded(self, convention: str = "centre") -> PaddedTokens | None:
        """Dense padded tensors of every item (built once), or ``None`` over the memory budget."""
        if convention not in self._padded:
            need = PaddedTokens.nbytes(self.source, self.ids) if self.ids else 0
            src = self.source
            if self.ids and src.dense_bytes + src._used + need <= src.cache_bytes:
                self._padded[convention] = PaddedTokens(src, self.ids, convention)
                src.dense_bytes += need
            else:
                self._padded[convention] = None
        return self._padded[convention]

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers do not need the dense copy
        state = dict(self.__dict__)
        state["_padded"] = {}
        return state


class GridDataset(torch.utils.data.Dataset):
    """Patch grids ``[d, h, w, C]`` with dense targets (segmentation); items ``{x, y, index}``.

    Args:
        source: a patch :class:`TokenSource`.
        ids: item ids.
        target: callable ``id -> torch.LongTensor [D', H', W']`` (the label map at the decoder's
            output resolution); results are cached in memory (small at capped resolution).
    """

    kind = "grid"

    def __init__(self, source: TokenSource, ids: Sequence[str],
                 target: Callable[[str], torch.Tensor]) -> None:
        if source.feature != "patch":
            raise ValueError("segmentation needs patch tokens (feature=patch)")
        self.source = source
        self.ids = list(ids)
        self._target = target
        self._targets: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def target(self, i: int) -> torch.Tensor:
        key = self.ids[i]
        if key not in self._targets:
            self._targets[key] = torch.as_tensor(self._target(key)).long()
        return self._targets[key]

    def grid(self, i: int) -> tuple[int, int, int]:
        return self.source.grid(self.ids[i])

    def __getitem__(self, i: int) -> dict[str, Any]:
        x, grid = self.source.get(self.ids[i])
        return {"x": x.reshape(*grid, -1), "y": self.target(i), "index": i}


# --------------------------------------------------------------------------- collation
def pad_collate(items: Sequence[dict[str, Any]], *, convention: str = "centre") -> dict[str, Any]:
    """Pad token sets to ``x [B, T_max, C]``.

    Returns a dict with ``x``, ``mask [B, T_max]`` (True = real token), ``coords [B, T_max, 3]``
    (relative token positions, 0 on padding), ``grid [B, 3]`` long, ``y`` stacked, ``index [B]``.
    """
    b = len(items)
    t_max = max(int(it["x"].shape[0]) for it in items)
    c = int(items[0]["x"].shape[-1])
    x = torch.zeros(b, t_max, c, dtype=torch.float32)
    mask = torch.zeros(b, t_max, dtype=torch.bool)
    coords = torch.zeros(b, t_max, 3, dtype=torch.float32)
    for k, it in enumerate(items):
        n = int(it["x"].shape[0])
        x[k, :n] = it["x"]
        mask[k, :n] = True
        coords[k, :n] = token_coords(it["grid"], convention)
    return {"x": x, "mask": mask, "coords": coords,
            "grid": torch.tensor([list(it["grid"]) for it in items], dtype=torch.long),
            "y": torch.stack([torch.as_tensor(it["y"]) for it in items]),
            "index": torch.tensor([int(it["index"]) for it in items], dtype=torch.long)}


def stack_collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack equal-shaped items (vectors, or equal patch grids for segmentation)."""
    shapes = {tuple(it["x"].shape) for it in items}
    if len(shapes) > 1:
        raise ValueError(f"cannot stack items with different shapes {sorted(shapes)}; "
                         "batches must group equal grids")
    return {"x": torch.stack([it["x"] for it in items]),
            "y": torch.stack([torch.as_tensor(it["y"]) for it in items]),
            "index": torch.tensor([int(it["index"]) for it in items], dtype=torch.long)}
