"""Several backbones, one cohort: backbone specs (``FAMILY[@LABEL][=WEIGHTS]``), loading each through
:func:`voxelfm.load_backbone`, and extracting each into its own embedding store.

A spec names a backbone family of the registry (``voxelfm``, ``merlin``, ``ctfm``, ``fmcib``,
``m3d_clip``, ``radfm``, ``ct_clip``, ``clip2d``), optionally a label (the column and store name;
default: the family) and optionally its weights (file, folder or Hugging Face repo id found in the
local hub cache; none = seeded random init, a pipeline check and not a result)::

    voxelfm=runs/teacher,merlin=~/weights/merlin.pt,voxelfm@random
    clip2d@biomedclip=microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224

Family options (``config`` of a voxelfm checkpoint, ``model``/``window`` of clip2d, ...) are given
per label as ``LABEL:KEY=VALUE`` (values are JSON where they parse, else text).

:func:`extract_backbones` runs :func:`voxelfm.inference.extract_batch` once per backbone into
``ROOT/<label>/``: resumable (finished ids are skipped; a store made with other weights or
settings is refused), sharded under ``torchrun`` like ``voxelfm extract`` (one process group for
all backbones), one model in memory at a time.
"""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voxelfm.utils.json_file import json_or_text

__all__ = ["BackboneSpec", "check_specs", "extract_backbones", "load_spec", "parse_backbones", "parse_options"]

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone to compare: its ``label`` (table column and store folder), registry ``family``,
    ``weights`` (``None`` = seeded random init) and family ``options``."""

    label: str
    family: str
    weights: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "family": self.family, "weights": self.weights, "options": dict(self.options)}



def parse_options(items: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``["LABEL:KEY=VALUE", ...]`` → ``{label: {key: value}}`` (values parsed as JSON where possible).

    Raises:
        ValueError: an item not of that form.
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        head, sep, val = str(item).partition("=")
        label, colon, key = head.partition(":")
        if not sep or not colon or not label.strip() or not key.strip():
            raise ValueError(f"a backbone option is LABEL:KEY=VALUE (e.g. biomedclip:window=lung), got {item!r}")
        out.setdefault(label.strip(), {})[key.strip()] = json_or_text(val.strip())
    return out


def parse_backbones(specs: str | Sequence[str], options: Mapping[str, Mapping[str, Any]] | Iterable[str] = ()
                    ) -> list[BackboneSpec]:
    """Parse ``FAMILY[@LABEL][=WEIGHTS]`` specs (comma-separated text or a list of them).

    Args:
        specs: e.g. ``"voxelfm=teacher/,merlin=merlin.pt,voxelfm@random"``.
        options: ``{label: {key: value}}`` or ``LABEL:KEY=VALUE`` strings (see :func:`parse_options`).

    Returns:
        One :class:`BackboneSpec` per backbone, in the given order.

    Raises:
        ValueError: an empty or malformed spec, a label that is not a safe name, the same label
            twice (give each backbone of one family its own ``@LABEL``), options for an unknown
            label, or fewer than two backbones.
    """
    items = [s for part in ([specs] if isinstance(specs, str) else list(specs)) for s in str(part).split(",")]
    items = [s.strip() for s in items if s.strip()]
    opts = parse_options(options) if not isinstance(options, Mapping) else {k: dict(v) for k, v in options.items()}
    out: list[BackboneSpec] = []
    seen: set[str] = set()
    for item in items:
        name, sep, weights = item.partition("=")
        family, at, label = name.strip().partition("@")
        family, label = family.strip(), (label.strip() if at else family.strip())
        if not family:
            raise ValueError(f"backbone spec {item!r} has no family; write FAMILY[@LABEL][=WEIGHTS], "
                             "e.g. voxelfm=teacher/")
        if not _LABEL.match(label):
            raise ValueError(f"backbone label {label!r} must be 1-64 letters, digits, '_', '.', '+' or '-' "
                             "(it names a table column and a folder)")
        if label in seen:
            raise ValueError(f"backbone label {label!r} is used twice; give each backbone its own label, "
                             f"e.g. {family}@{label}_2=WEIGHTS")
        seen.add(label)
        w = weights.strip() if sep else ""
        out.append(BackboneSpec(label=label, family=family, weights=os.path.expanduser(w) if w else None,
                                options=opts.get(label, {})))
    unknown = sorted(set(opts) - seen)
    if unknown:
        raise ValueError(f"options given for unknown backbone label(s) {', '.join(unknown)}; "
                         f"labels: {', '.join(sorted(seen)) or 'none'}")
    if len(out) < 2:
        raise ValueError(f"a comparison needs at least two backbones, got {len(out)}; "
                         "e.g. --backbones voxelfm=WEIGHTS,voxelfm@random")
    return out


def check_specs(specs: Sequence[BackboneSpec]) -> None:
    """Fail fast, before hours of extraction: every family exists and has its dependencies, its
    options are ones it takes, and weights given as files / folders / hub ids can be found.

    Raises:
        ConfigError, MissingDependencyError, CheckpointError, FileNotFoundError: one line each.
    """
    import inspect

    from voxelfm.baselines import check_requirements, get_family
    from voxelfm.errors import ConfigError

    for spec in specs:
        family = get_family(spec.family)
        check_requirements(family)
        options = dict(spec.options)
        if spec.family == "voxelfm":
            options.pop("config", None)
            if options:
                raise ConfigError(f"backbone {spec.label}: voxelfm takes only the option config, "
                                  f"got {', '.join(options)}")
            if spec.weights is not None and not Path(spec.weights).exists():
                from voxelfm.models.config import CONFIGS

                if spec.weights not in CONFIGS:
                    raise FileNotFoundError(f"backbone {spec.label}: weights {spec.weights} do not exist "
                                            f"(a file, a folder or a config name: {', '.join(CONFIGS)})")
            continue
        try:
            inspect.signature(family.load).bind(None, device="cpu", **options)
        except TypeError:
            params = [p.name for p in inspect.signature(family.load).parameters.values()
                      if p.kind == p.KEYWORD_ONLY and p.name != "device"]
            raise ConfigError(f"backbone {spec.label} ({spec.family}) has no option(s) "
                              f"{', '.join(sorted(set(options) - set(params)))}; its options: "
                              f"{', '.join(params) or 'none'}") from None
        if spec.weights is None:
            continue
        if family.resolve:
            from voxelfm.baselines._weights import resolve_weights

            resolve_weights(spec.weights, family)
        else:  # a family that resolves its own weights may say so through its module's check_weights
            check = getattr(inspect.getmodule(family.load), "check_weights", None)
            if callable(check):
                check(spec.weights, **options)


def load_spec(spec: BackboneSpec, *, device: str = "cpu") -> Any:
    """Load one backbone through :func:`voxelfm.load_backbone` (eval mode, on ``device``).

    ``weights=None`` gives the family's seeded random init with a one-line warning.
    """
    import voxelfm

    options = dict(spec.options)
    if spec.family == "voxelfm":  # the ViT's architecture option is load_backbone's config=
        return voxelfm.load_backbone(spec.family, weights=spec.weights, device=device,
                                     config=options.pop("config", None), **options)
    return voxelfm.load_backbone(spec.family, weights=spec.weights, device=device, **options)


#: extraction options of the ViT pipeline and their neutral values (what a baseline family gets)
_VIT_ONLY: dict[str, Any] = {"preset": "default", "crop_background": False, "max_patches": None, "window": None}


def _options_for(model: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    """The extraction options for one backbone: the ViT pipeline's options (preset, background crop,
    token budget, chunked windows) apply to voxelfm backbones only; a baseline family preprocesses
    exactly as its authors did and runs one forward pass unless it supports chunked inference."""
    from voxelfm.inference.extract import is_baseline

    opts = dict(options)
    if is_baseline(model):
        opts.update({k: v for k, v in _VIT_ONLY.items() if k in opts})
        if opts.get("mode") == "chunked" and not getattr(model, "supports_chunked", False):
            opts["mode"] = "auto"
    return opts


def extract_backbones(specs: Sequence[BackboneSpec], items: Any, root: str | os.PathLike[str], *,
                      show_progress: bool | None = None, **extract_options: Any) -> dict[str, Any]:
    """Extract every item with every backbone into ``root/<label>/`` (resumable, sharded).

    Args:
        specs: the backbones (:func:`parse_backbones`).
        items: as :func:`voxelfm.inference.extract_batch` (paths, manifests, InputItems, tuples).
        root: parent folder of the stores.
        show_progress: progress bars (one per backbone, with ETA).
        **extract_options: passed to :func:`~voxelfm.inference.extract_batch` for every backbone;
            ``preset``, ``crop_background``, ``max_patches``, ``window`` and ``mode="chunked"``
            apply to voxelfm backbones only (the baselines preprocess as their authors did).

    Returns:
        ``{label: BatchSummary}`` (counts summed over ranks under ``torchrun``).
    """
    import torch

    from voxelfm.inference.batch import _as_items, _dist_context, extract_batch

    all_items = _as_items(items)  # expand manifests once, fail on duplicate ids before any model loads
    rank, world, owns_group = _dist_context(extract_options.get("device"))
    summaries: dict[str, Any] = {}
    try:
        for spec in specs:
            model = load_spec(spec)
            if rank == 0 and show_progress is not False:
                print(f"extract {spec.label} ({spec.family}, {spec.weights or 'random init'}) "
                      f"-> {Path(root) / spec.label}", flush=True)
            summaries[spec.label] = extract_batch(model, all_items, Path(root) / spec.label,
                                                  show_progress=show_progress, **_options_for(model, extract_options))
            del model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    finally:
        if owns_group:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()
    return summaries
