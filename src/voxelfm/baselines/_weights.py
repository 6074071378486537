"""Finding and reading released weights of a backbone family, never downloading.

* :func:`resolve_weights` — a file, a folder (the family's known file names in it) or a Hugging
  Face repo id looked up in the local hub cache → one local file, or one clear error line saying
  which file to download from where and where to put it;
* :func:`read_state_dict` — ``torch.load(weights_only=True, mmap)`` or safetensors → a flat
  ``{key: Tensor}`` dict (nested containers such as ``{"trunk_state_dict": {...}}`` are flattened
  with dotted prefixes);
* :func:`load_matching` — strip/drop prefixes, compare with the module, load; a checkpoint of
  another family or a wrong config raises :class:`~voxelfm.errors.CheckpointError` listing the
  first missing/unexpected keys;
* :func:`random_init` — seeded random initialisation with the one-line warning.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import Tensor, nn

from voxelfm.errors import CheckpointError

if TYPE_CHECKING:  # pragma: no cover
    from voxelfm.baselines.registry import BackboneFamily

__all__ = ["resolve_weights", "read_state_dict", "load_matching", "LoadReport", "random_init", "uninitialised",
           "build_with_weights",
           "hub_cache_dirs", "RANDOM_INIT_SEED", "WEIGHT_SUFFIXES"]

#: Seed of every family's random initialisation (``weights=None``).
RANDOM_INIT_SEED = 0
#: File endings taken for weights when a folder holds exactly one such file.
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".torch", ".safetensors")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_M = TypeVar("_M", bound=nn.Module)


# ----------------------------------------------------------------------------- locating files
def hub_cache_dirs() -> list[Path]:
    """Hugging Face hub cache folders, in lookup order: ``HF_HUB_CACHE``, ``HF_HOME/hub``,
    ``~/.cache/huggingface/hub``."""
    out: list[Path] = []
    if os.environ.get("HF_HUB_CACHE"):
        out.append(Path(os.environ["HF_HUB_CACHE"]).expanduser())
    if os.environ.get("HF_HOME"):
        out.append(Path(os.environ["HF_HOME"]).expanduser() / "hub")
    out.append(Path("~/.cache/huggingface/hub").expanduser())
    seen: list[Path] = []
    for p in out:
        if p not in seen:
            seen.append(p)
    return seen


def _from_hub_cache(repo_id: str, filenames: Iterable[str], repo_type: str) -> Path | None:
    names = list(filenames)
    for cache in hub_cache_dirs():
        try:  # the library knows refs/ and revisions; fall back to the plain layout without it
            from huggingface_hub import try_to_load_from_cache

            for name in names:
                hit = try_to_load_from_cache(repo_id, name, cache_dir=str(cache), repo_type=repo_type)
                if isinstance(hit, str) and Path(hit).is_file():
                    return Path(hit)
        except ImportError:
            pass
        folder = cache / f"{repo_type}s--{repo_id.replace('/', '--')}" / "snapshots"
        if folder.is_dir():
            for name in names:
                hits = sorted(folder.glob(f"*/{name}"), key=lambda p: p.stat().st_mtime, reverse=True)
                hits = [h for h in hits if h.is_file()]
                if hits:
                    return hits[0]
    return None


def _download_hint(family: BackboneFamily) -> str:
    files = family.weight_files[0] if family.weight_files else "the weights file"
    if family.hub_repo:
        kind = "datasets/" if family.hub_repo_type == "dataset" else ""
        where = f"https://huggingface.co/{kind}{family.hub_repo} ({files})"
        cache = hub_cache_dirs()[0]
        put = (f"pass its local path as weights=, or put it in the Hugging Face cache ({cache}, e.g. "
               f"`huggingface-cli download {family.hub_repo} {files}"
               f"{' --repo-type dataset' if family.hub_repo_type == 'dataset' else ''}`)")
    else:
        where = f"{family.weights_help} ({files})"
        put = "pass its local path as weights="
    return f"download {where} and {put}"


def _pick_in_folder(folder: Path, family: BackboneFamily) -> Path:
    for name in family.weight_files:
        for cand in (folder / name, folder / Path(name).name):
            if cand.is_file():
                return cand
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(WEIGHT_SUFFIXES))
    if len(found) == 1:
        return found[0]
    known = ", ".join(family.weight_files) or "a weights file"
    if not found:
        raise CheckpointError(f"{folder}: no {family.name} weights in this folder (looked for {known}); "
                              f"{_download_hint(family)}")
    raise CheckpointError(f"{folder}: several weight files ({', '.join(p.name for p in found[:6])}) and none "
                          f"named {known}; pass the file to load")


def resolve_weights(weights: str | os.PathLike[str], family: BackboneFamily) -> Path:
    """The local weights file of ``family`` named by ``weights``.

    Args:
        weights: a file; a folder (``family.weight_files`` looked up in it, else its only weights
            file); or a Hugging Face repo id ``ORG/NAME`` resolved in the local hub cache
            (:func:`hub_cache_dirs`; ``huggingface_hub.try_to_load_from_cache`` when installed).

    Raises:
        CheckpointError: nothing found — the message says which file to download from which repo
            and where to put it. Nothing is ever downloaded.
    """
    text = os.fspath(weights)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        return _pick_in_folder(path, family)
    if _HUB_ID.match(text) and not text.startswith((".", "/")):
        names = family.weight_files or ()
        hit = _from_hub_cache(text, names, family.hub_repo_type) if names else None
        if hit is not None:
            return hit
        raise CheckpointError(f"{text}: not in the local Hugging Face cache ({', '.join(map(str, hub_cache_dirs()))}); "
                              f"{_download_hint(family)}")
    raise CheckpointError(f"{text}: no such file or folder for {family.name} weights; {_download_hint(family)}")


# ----------------------------------------------------------------------------- reading files
def _flatten(obj: Mapping[Any, Any], prefix: str, out: dict[str, Tensor]) -> None:
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, Tensor):
            out[key] = v
        elif isinstance(v, Mapping):
            _flatten(v, key + ".", out)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """All tensors of a weights file as one flat dict.

    ``.safetensors`` through safetensors, anything else through
    ``torch.load(map_location="cpu", weights_only=True, mmap=True)`` (non-zip files without mmap).
    Nested mappings are flattened with dotted keys: ``{"trunk_state_dict": {"conv1.weight": t}}``
    → ``{"trunk_state_dict.conv1.weight": t}``; non-tensor entries (epoch numbers, lists) are left out.

    Raises:
        CheckpointError: unreadable, truncated or garbage file, or a file without tensors (one line).
        FileNotFoundError: no such file.
    """
    from voxelfm.models.checkpoint import read_checkpoint

    obj = read_checkpoint(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    out: dict[str, Tensor] = {}
    _flatten(obj, "", out)
    if not out:
        raise CheckpointError(f"{path}: no tensors in this file (top-level keys: {', '.join(map(str, list(obj)[:8]))})")
    return out


# ----------------------------------------------------------------------------- loading
@dataclass
class LoadReport:
    """What :func:`load_matching` did: keys loaded, dropped (heads, other sub-models), and any
    missing keys that were allowed."""

    loaded: int = 0
    dropped: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped_prefixes: list[str] = field(default_factory=list)
    prefix: str = ""  # the ``strip`` prefix the loaded keys carried ("" for bare keys)

    def to_dict(self) -> dict[str, Any]:
        return {"loaded_keys": self.loaded, "dropped_keys": self.dropped, "missing_keys": list(self.missing),
                "unexpected_keys": list(self.unexpected), "dropped_prefixes": list(self.dropped_prefixes),
                "stripped_prefix": self.prefix}


def _fmt(keys: list[str], n: int = 5) -> str:
    from voxelfm.models.checkpoint import _fmt_list

    return _fmt_list(keys, n)


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(key.startswith(p) or re.fullmatch(p, key) is not None for p in patterns)


def load_matching(module: nn.Module, state_dict: Mapping[str, Tensor], *, strip: Iterable[str] = (),
                  drop: Iterable[str] = (), select: bool | str = False, allow_missing: Iterable[str] = (),
                  source: str = "checkpoint", family: str = "") -> LoadReport:
    """Load the matching part of ``state_dict`` into ``module``; anything else is one clear error.

    Args:
        strip: key prefixes removed (the first one that matches), e.g. ``"encode_image.i3_resnet."``.
        drop: prefixes (after stripping) of keys to leave out on purpose (unused heads, text towers).
        select: keep only keys that carried one of the ``strip`` prefixes (the rest of a bigger
            checkpoint, e.g. a language model, is dropped without being compared); ``"auto"``:
            select when any key carries one (a bare state dict is then taken whole).
        allow_missing: prefixes or regular expressions of module keys that may be absent (e.g.
            buffers a newer library version added).
        source, family: named in error messages.

    Returns:
        :class:`LoadReport`. Tensors are cast to the module's dtypes (bf16 checkpoints load into fp32).

    Raises:
        CheckpointError: no key matches (another family's checkpoint), or missing / unexpected keys
            or shape mismatches (a wrong config) — first keys of each list in the message.
    """
    strip, drop, allow_missing = tuple(strip), tuple(drop), tuple(allow_missing)
    if select == "auto":
        select = any(k.startswith(strip) for k in state_dict) if strip else False
    expected = module.state_dict()
    sd: dict[str, Tensor] = {}
    report = LoadReport(dropped_prefixes=list(drop))
    used: dict[str, int] = {}
    for key, value in state_dict.items():
        new, prefixed = key, ""
        for p in strip:
            if key.startswith(p):
                new, prefixed = key[len(p):], p
                break
        if (select and strip and not prefixed) or _matches(new, drop):
            report.dropped += 1
            continue
        sd[new] = value
        used[prefixed] = used.get(prefixed, 0) + 1
    report.prefix = max(used, key=used.__getitem__) if used else ""
    what = f"{family} backbone" if family else type(module).__name__
    overlap = [k for k in sd if k in expected]
    if not overlap:
        first = _fmt(list(state_dict), 4)
        hint = f" (expected keys such as {_fmt(list(expected), 3)}"
        hint += f" after removing the prefix {strip[0]!r})" if strip else ")"
        raise CheckpointError(f"{source}: not a {what} checkpoint — none of its {len(state_dict)} keys match "
                              f"(its keys: {first}){hint}; pass this family's released weights or the right backbone name")
    missing = [k for k in expected if k not in sd and not _matches(k, allow_missing)]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [f"{k} {list(sd[k].shape)} vs {list(expected[k].shape)}" for k in overlap
                  if tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        from voxelfm.models.checkpoint import key_problems

        err = CheckpointError(f"{source}: does not fit the {what} as configured — "
                              + key_problems(missing, unexpected, mismatched, limit=5, mismatch_limit=3)
                              + " — check the backbone name, its options (size, variant) and the file")
        err.missing_keys, err.unexpected_keys, err.mismatched_keys = missing, unexpected, mismatched  # type: ignore[attr-defined]
        raise err
    cast = {k: v.to(expected[k].dtype) if v.dtype != expected[k].dtype else v for k, v in sd.items()}
    module.load_state_dict(cast, strict=False)
    report.loaded = len(cast)
    report.missing = [k for k in expected if k not in sd]
    return report


def random_init(name: str, build: Callable[[], _M], *, seed: int = RANDOM_INIT_SEED, stacklevel: int = 3) -> _M:
    """``build()`` under a fixed seed without touching the caller's RNG, with the one-line warning
    ``random-init <name> weights: a pipeline check, not a result``."""
    warnings.warn(f"random-init {name} weights: a pipeline check, not a result", UserWarning, stacklevel=stacklevel)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def uninitialised(build: Callable[[], _M]) -> _M:
    """``build()`` without running its weight initialisation (built on the meta device, then given
    empty CPU storage): for modules about to receive **every** tensor from a checkpoint through
    :func:`load_matching` without ``allow_missing`` (which guarantees nothing stays uninitialised)."""
    with torch.device("meta"):
        module = build()
    return module.to_empty(device="cpu")


def build_with_weights(name: str, build: Callable[[], _M], weights: str | os.PathLike[str] | None, *,
                       part: Callable[[_M], nn.Module] = lambda m: m,
                       fmt: str | Callable[[LoadReport], str] = "", **matching: Any) -> _M:
    """A family's model: seeded random init (``weights=None``, with the warning) or built without
    initialisation and loaded from ``weights`` with :func:`load_matching` into ``part(model)``.

    ``model.source`` gets ``format`` (``fmt``, or ``fmt(report)`` naming the layout from the prefix
    the keys carried, or ``random-init``), ``path`` and the load report.
    ``matching``: ``strip``, ``drop``, ``select``, ``allow_missing`` of :func:`load_matching`
    (``allow_missing`` is refused: every tensor must come from the file).
    """
    if weights is None:
        model = random_init(name, build, stacklevel=4)
        model.source = {"format": "random-init", "path": None}
        return model
    if matching.get("allow_missing"):
        raise ValueError("build_with_weights loads every tensor from the file; allow_missing is not supported")
    sd = read_state_dict(weights)
    model = uninitialised(build)
    report = load_matching(part(model), sd, source=str(weights), family=name, **matching)
    layout = fmt(report) if callable(fmt) else (fmt or name)
    model.source = {"format": layout, "path": str(weights), **report.to_dict()}
    return model
