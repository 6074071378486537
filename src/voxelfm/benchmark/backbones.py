"""Backbones of a benchmark: ``NAME=WEIGHTS`` specs, parsed and loaded through one function.

``voxelfm benchmark paper --backbones voxelfm=W,random=vit_base,merlin=merlin.pt`` names each
column of the results table and says what to load:

* ``NAME=WEIGHTS`` where ``NAME`` is a backbone *family* known to :func:`voxelfm.load_backbone`
  (``voxelfm``, and the other CT foundation models where that release has them: ``merlin``,
  ``ct_clip``, ...) loads ``load_backbone(NAME, weights=WEIGHTS)``; ``WEIGHTS`` may be
  ``random`` for a seeded random init of that family.
* ``NAME=FAMILY:WEIGHTS`` names the column ``NAME`` and loads ``FAMILY`` (two columns of one
  family, e.g. ``pretrained=voxelfm:run/ random=voxelfm:vit_base``).
* Any other ``NAME`` is a column of the VoxelFM ViT: ``WEIGHTS`` is a weights file or folder, or a
  config name (``vit_tiny``, ``vit_small``, ``vit_base``) for the seeded random init.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voxelfm.errors import ConfigError

__all__ = ["BackboneSpec", "backbone_families", "load_backbone_spec", "parse_backbones"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_RANDOM = ("random", "none", "random-init")


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone (one column of the results table).

    Attributes:
        name: column label (letters, digits, ``_ . -``).
        family: ``voxelfm`` or another family of :func:`voxelfm.load_backbone`.
        weights: weights file / folder / hub id, a ViT config name, or ``None`` (random init).
    """

    name: str
    family: str
    weights: str | None

    @property
    def text(self) -> str:
        """The spec as given on the command line (``name=family:weights``)."""
        return f"{self.name}={self.family}:{self.weights or 'random'}"

    def fingerprint(self) -> str:
        """What identifies these weights without loading them: family, path, size and mtime of
        the weights file(s) (a config name or random init identifies itself)."""
        parts = [self.family, str(self.weights)]
        if self.weights is not None:
            p = Path(self.weights).expanduser()
            files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else ([p] if p.is_file() else [])
            for f in files[:200]:
                st = f.stat()
                parts.append(f"{f.resolve()}:{st.st_size}:{int(st.st_mtime)}")
        return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def backbone_families() -> list[str]:
    """Families :func:`voxelfm.load_backbone` can load (``voxelfm`` first)."""
    from voxelfm.baselines import family_names

    return ["voxelfm"] + [str(n) for n in family_names() if n != "voxelfm"]


def _split_items(text: str | Iterable[str]) -> list[str]:
    items = [text] if isinstance(text, str) else list(text)
    return [p.strip() for item in items for p in str(item).split(",") if p.strip()]


def parse_backbones(text: str | Iterable[str]) -> list[BackboneSpec]:
    """Parse ``"voxelfm=W,random=vit_tiny"`` (or a list of such strings) into specs.

    Raises:
        ConfigError: an item without ``=``, an empty or duplicate name, an unknown ``FAMILY:``.
    """
    families = backbone_families()
    specs: list[BackboneSpec] = []
    for item in _split_items(text):
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise ConfigError(f"--backbones expects NAME=WEIGHTS items separated by commas, got {item!r} "
                              "(e.g. voxelfm=weights/,random=vit_base)")
        if not _NAME.match(name):
            raise ConfigError(f"backbone name {name!r}: use letters, digits, '_', '.' or '-'")
        family = name if name in families else "voxelfm"
        head, colon, rest = value.partition(":")
        if colon and head in families:
            family, value = head, rest.strip()
        elif colon and not Path(value).expanduser().exists() and _NAME.match(head) and len(head) > 1:
            raise ConfigError(f"{item!r}: unknown backbone family {head!r}; available: {', '.join(families)}")
        weights: str | None = None if value.lower() in _RANDOM else value
        if family == "voxelfm" and weights is None:
            raise ConfigError(f"{item!r}: random init of the VoxelFM ViT needs a config name "
                              "(vit_tiny, vit_small, vit_base) as weights")
        if any(s.name == name for s in specs):
            raise ConfigError(f"backbone name {name!r} given twice; every column needs its own name")
        specs.append(BackboneSpec(name=name, family=family, weights=weights))
    if not specs:
        raise ConfigError("no backbones given: --backbones NAME=WEIGHTS[,NAME=WEIGHTS...]")
    return specs


def load_backbone_spec(spec: BackboneSpec, *, device: str = "cpu") -> Any:
    """Load the backbone of ``spec`` (eval mode) through the one loader of backbone specs,
    :func:`voxelfm.inference.backbones.load_spec` (``load_backbone(FAMILY, weights=WEIGHTS)``; the
    VoxelFM ViT's weights are a path or a config name)."""
    from voxelfm.inference.backbones import BackboneSpec as LoadSpec, load_spec

    weights = os.path.expanduser(spec.weights) if spec.weights is not None else None
    return load_spec(LoadSpec(label=spec.name, family=spec.family, weights=weights), device=device)
