"""Build a backbone and load its released file (or seed a random init) — shared by the families
whose checkpoints come either bare or inside a bigger model (M3D-CLIP, RadFM, CT-CLIP)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch
from torch import nn

from voxelfm.baselines._weights import load_matching, random_init, read_state_dict, uninitialised

__all__ = ["build_and_load"]

_B = TypeVar("_B", bound=nn.Module)


def build_and_load(family: str, build: Callable[[], _B], weights: Any, device: str | torch.device, *,
                   formats: tuple[str, str], prefixes: tuple[str, ...] = (), drop: Iterable[str] = (),
                   allow_missing: Iterable[str] = (), keep: tuple[str, ...] = (),
                   part: Callable[[_B], nn.Module] = lambda m: m) -> _B:
    """``build()`` with ``weights`` loaded into ``part(model)``, or seeded random init for ``None``.

    Args:
        formats: ``(name when a prefix in prefixes matched, name of the bare layout)`` for ``source``.
        prefixes: key prefixes of the bigger model the weights sit in (stripped; the rest of that
            model is dropped unread when any key carries one).
        drop, allow_missing: as :func:`~voxelfm.baselines._weights.load_matching`.
        keep: if given, only keys starting with these are compared (the rest count as dropped).

    Without ``allow_missing`` every tensor comes from the file (``load_matching`` raises otherwise), so
    the module is built uninitialised (no random init of e.g. CT-CLIP's 151 M-weight latent projection).
    """
    if weights is None:
        model = random_init(family, build, stacklevel=4)
        model.source = {"format": "random-init"}
        return model.to(device)
    allow_missing = tuple(allow_missing)
    model = build() if allow_missing else uninitialised(build)
    sd = read_state_dict(weights)
    kept = {k: v for k, v in sd.items() if k.startswith(keep)} if keep else sd
    prefixed = bool(prefixes) and any(k.startswith(prefixes) for k in kept)
    report = load_matching(part(model), kept or sd, strip=prefixes, drop=drop, select=prefixed,
                           allow_missing=allow_missing, source=str(weights), family=family)
    report.dropped += len(sd) - len(kept) if kept else 0
    model.source = {"format": formats[0] if prefixed else formats[1], "path": str(weights), **report.to_dict()}
    return model.to(device)
