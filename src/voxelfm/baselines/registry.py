"""The backbone families voxelfm can load: name → :class:`BackboneFamily`, imported lazily.

Each family lives in its own module (``voxelfm.baselines.<module>``) that defines ``FAMILY``; the
table :data:`FAMILY_MODULES` names it as ``"module:ATTR"``. Importing this registry imports no
optional dependency (MONAI, open_clip ...): a family module is imported on first use, and a missing
dependency becomes one line saying which extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from voxelfm.errors import ConfigError, VoxelFMError

if TYPE_CHECKING:  # pragma: no cover
    from voxelfm.baselines.base import BaselineBackbone

__all__ = ["BackboneFamily", "FAMILY_MODULES", "family_names", "get_family", "check_requirements",
           "MissingDependencyError"]

#: name → ``"module:ATTR"`` of its :class:`BackboneFamily`. Order = order in listings.
FAMILY_MODULES: dict[str, str] = {
    "voxelfm": "voxelfm.baselines.voxelfm_vit:FAMILY",
    "merlin": "voxelfm.baselines.merlin:FAMILY",
    "ctfm": "voxelfm.baselines.ctfm:FAMILY",
    "fmcib": "voxelfm.baselines.fmcib:FAMILY",
    "m3d_clip": "voxelfm.baselines.m3d_clip:FAMILY",
    "radfm": "voxelfm.baselines.radfm:FAMILY",
    "ct_clip": "voxelfm.baselines.ct_clip:FAMILY",
    "clip2d": "voxelfm.baselines.clip2d:FAMILY",
}


class MissingDependencyError(VoxelFMError, ImportError):
    """An optional dependency of a backbone family is not installed (the message says what to install)."""


@dataclass(frozen=True)
class BackboneFamily:
    """One loadable backbone family.

    Attributes:
        name: registry name (``merlin``, ``ctfm`` ...), also ``BaselineBackbone.family``.
        load: ``load(weights, *, device="cpu", **options) -> BaselineBackbone``; ``weights`` is a
            local file already resolved by :func:`voxelfm.baselines._weights.resolve_weights`, or
            ``None`` for seeded random init.
        embed_dim: width ``C`` of the global embedding and of the patch tokens.
        description: one line: what the model is and what its embedding is.
        weights_help: one line: where the released weights are (repo, file) and their licence.
        requires: importable modules the family needs (checked before ``load``).
        extra: the ``pip install "voxelfm[EXTRA]"`` extra providing ``requires``.
        weight_files: known file names of the released weights (searched in a folder or in a
            Hugging Face hub snapshot), first = preferred.
        hub_repo: Hugging Face repo id of the released weights (``None``: not on the hub).
        hub_repo_type: ``"model"`` or ``"dataset"`` (CT-RATE hosts CT-CLIP in a dataset repo).
        licence: licence of the released weights.
        resolve: pass ``weights`` through :func:`~voxelfm.baselines._weights.resolve_weights`
            before ``load`` (``False`` for VoxelFM, whose loader understands run folders itself).
    """

    name: str
    load: Callable[..., "BaselineBackbone"]
    embed_dim: int
    description: str
    weights_help: str
    requires: tuple[str, ...] = ()
    extra: str | None = "baselines"
    weight_files: tuple[str, ...] = ()
    hub_repo: str | None = None
    hub_repo_type: str = "model"
    licence: str = ""
    resolve: bool = True


def family_names() -> list[str]:
    """Names accepted by ``voxelfm.load_backbone(NAME, weights=...)`` and ``voxelfm extract --backbone``."""
    return list(FAMILY_MODULES)


def _install_hint(extra: str | None) -> str:
    return f'pip install "voxelfm[{extra}]"' if extra else "install the missing package"


def check_requirements(family: BackboneFamily) -> None:
    """Raise :class:`MissingDependencyError` (one line) if a module in ``family.requires`` is missing."""
    missing = [m for m in family.requires if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(f"backbone {family.name!r} needs {', '.join(missing)}: "
                                     f"{_install_hint(family.extra)}")


def get_family(name: str) -> BackboneFamily:
    """The :class:`BackboneFamily` registered as ``name``.

    Raises:
        ConfigError: unknown name, or a family not shipped in this installation.
        MissingDependencyError: the family module needs an optional dependency that is missing.
    """
    key = str(name).strip().lower()
    if key not in FAMILY_MODULES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(FAMILY_MODULES)}")
    module_name, attr = FAMILY_MODULES[key].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise ConfigError(f"backbone {key!r} is not available in this voxelfm installation "
                              f"({module_name} is missing)") from None
        raise MissingDependencyError(f"backbone {key!r} needs {exc.name}: {_install_hint('baselines')}") from None
    family: Any = getattr(module, attr)
    if not isinstance(family, BackboneFamily) or family.name != key:
        raise ConfigError(f"{module_name}.{attr} is not the BackboneFamily {key!r}")
    return family
