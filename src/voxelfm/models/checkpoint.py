"""Loading and saving backbone weights: reference ``.pth`` formats, bare state dicts, safetensors.

Accepted by :func:`load_backbone` (REFERENCE.md §1.9):

* reference teacher dump ``{"teacher": {"backbone.*", "dino_head.*"}}`` (format 1; the released
  ``99999.pth``);
* reference training checkpoint ``{"iteration", "model": {"teacher.backbone.*",
  "student.backbone.module.*", ...}, "optimizer"}`` (format 2) — the **teacher** (EMA) is loaded;
* a bare backbone state dict, keys with or without ``module.`` / ``backbone.`` / ``_orig_mod.``
  prefixes (head keys ``dino_head.*`` / ``ibot_head.*`` are ignored);
* a folder (or its ``model.safetensors``) written by :func:`save_backbone`;
* a reference run / Hugging Face-style folder with ``config.yaml`` and ``checkpoints/*.pth`` or
  ``*.pth`` (or ``eval/training_*/teacher_checkpoint.pth``);
* a registered config name (random init).

Every ``.pth`` is read with ``torch.load(map_location="cpu", weights_only=True)``. Loading is
strict: missing / unexpected keys and shape mismatches raise :class:`~voxelfm.errors.CheckpointError`
with the lists. ``rope_embed.periods`` may be absent (it is regenerated from the config).
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from voxelfm.errors import CheckpointError, ConfigError
from voxelfm.models.config import CONFIGS, ViTConfig, config_names
from voxelfm.models.factory import VOXELFM_FORMAT, ConfigLike, resolve_config
from voxelfm.models.vit import VisionTransformer3D
from voxelfm.preprocess.presets import Preset
from voxelfm.utils.json_file import read_json_object

__all__ = [
    "load_backbone", "save_backbone", "save_reference_teacher", "extract_backbone_state_dict",
    "infer_config", "embedded_config", "load_state_dict_strict", "read_checkpoint", "find_reference_checkpoint",
    "WEIGHTS_NAME", "CONFIG_NAME", "MODEL_CARD_NAME", "LICENCE_NOTE", "RANDOM_INIT_SEED",
]

logger = logging.getLogger("voxelfm.models")

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
MODEL_CARD_NAME = "README.md"
FORMAT_VERSION = 1
LICENCE_NOTE = (
    "The weights keep the licence of their source; voxelfm does not relicense them. For the released "
    "VoxelFM ViT-B see https://huggingface.co/rmaguado/VoxelFM and https://github.com/rmaguado/VoxelFM. "
    "voxelfm code is Apache-2.0. Research features, not for clinical use."
)

#: Seed of the random initialisation behind a config name (``load_backbone("vit_base")``).
RANDOM_INIT_SEED = 0

_HEAD_PREFIXES = ("dino_head.", "ibot_head.")
_PERIODS_KEY = "rope_embed.periods"
_PTH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


# ----------------------------------------------------------------------------- reading files
def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """Read a ``.pth`` (``torch.load(map_location="cpu", weights_only=True)``, memory-mapped when
    possible) or a ``.safetensors`` file. Raises :class:`CheckpointError` if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # legacy (non-zip) serialisation cannot be memory-mapped
            if "mmap" not in str(exc) and "zip" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types; report one clear error
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: could not read it with torch.load(weights_only=True): {msg}. voxelfm only loads "
            "checkpoints made of plain tensors/containers (the reference formats are); re-save other "
            "files as a state dict of tensors") from None


# ----------------------------------------------------------------------------- format detection
def _is_tensor_dict(d: Any) -> bool:
    return isinstance(d, Mapping) and len(d) > 0 and all(isinstance(v, Tensor) for v in d.values())


def _strip_key(key: str) -> str:
    # The reference deletes "module." and then "backbone." anywhere in the key; we remove the
    # wrapper components (DDP/FSDP "module.", torch.compile "_orig_mod.") and a leading "backbone.".
    key = key.replace("_orig_mod.", "").replace("module.", "")
    if key.startswith("backbone."):
        key = key[len("backbone."):]
    return key


def _backbone_only(sd: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in sd.items():
        k = _strip_key(str(key))
        if k.startswith(_HEAD_PREFIXES):
            continue
        if k in out:
            raise CheckpointError(f"checkpoint has two entries for {k!r} after removing prefixes "
                                  "(module./backbone.); it mixes several models")
        out[k] = value
    return out


def _select_teacher(sd: Mapping[str, Any], where: str) -> dict[str, Any] | None:
    teacher = {k[len("teacher."):]: v for k, v in sd.items() if str(k).startswith("teacher.")}
    if teacher:
        return teacher
    if any(str(k).startswith("student.") for k in sd):
        raise CheckpointError(
            f"{where} holds only student weights (student.*), no teacher.*; the teacher (EMA) is the "
            "model to use for features. To load the student anyway, pass its backbone state dict "
            "(keys without 'student.backbone.module.') to load_backbone")
    return None


def extract_backbone_state_dict(obj: Any) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """Find the backbone weights in a loaded checkpoint object.

    Returns:
        ``(state_dict with bare keys, format, info)``; format is ``"reference-teacher"``,
        ``"reference-training"`` or ``"state-dict"``; info holds e.g. the training ``iteration``.

    Raises:
        CheckpointError: unrecognised layout or student-only weights.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint content is a {type(obj).__name__}, expected a dict of tensors "
                              "or a reference checkpoint dict")
    info: dict[str, Any] = {}
    if isinstance(obj.get("teacher"), Mapping):  # format 1: {"teacher": {backbone.*, dino_head.*}}
        sd = _backbone_only(obj["teacher"])
        fmt = "reference-teacher"
    elif isinstance(obj.get("model"), Mapping) and not _is_backbone_like(obj["model"]):
        # format 2: {"iteration", "model": {teacher.backbone.*, student.backbone.module.*, ...}}
        teacher = _select_teacher(obj["model"], "the training checkpoint")
        if teacher is None:
            raise CheckpointError("training checkpoint 'model' has no teacher.* keys; keys start with "
                                  f"{_key_prefixes(obj['model'])}")
        sd = _backbone_only(teacher)
        fmt = "reference-training"
        if isinstance(obj.get("iteration"), int):
            info["iteration"] = obj["iteration"]
    else:
        inner = obj
        for wrapper in ("model", "state_dict", "backbone", "teacher_backbone"):
            if isinstance(obj.get(wrapper), Mapping):
                inner = obj[wrapper]
                break
        teacher = _select_teacher(inner, "the checkpoint")
        sd = _backbone_only(teacher if teacher is not None else inner)
        fmt = "reference-training" if teacher is not None else "state-dict"
    non_tensors = sorted(k for k, v in sd.items() if not isinstance(v, Tensor))
    if non_tensors:
        raise CheckpointError(f"unrecognised checkpoint layout: entries {non_tensors[:8]} are not tensors "
                              f"(top-level keys: {sorted(map(str, obj))[:10]})")
    if not sd:
        raise CheckpointError("no backbone weights found in the checkpoint (top-level keys: "
                              f"{sorted(map(str, obj))[:10]})")
    return sd, fmt, info


def _is_backbone_like(d: Mapping[str, Any]) -> bool:
    keys = [_strip_key(str(k)) for k in d]
    return "cls_token" in keys or any(k.startswith("patch_embed.") for k in keys)


def _key_prefixes(d: Mapping[str, Any]) -> list[str]:
    return sorted({str(k).split(".")[0] for k in d})[:10]


def embedded_config(obj: Any) -> tuple[ViTConfig, Preset | None, str] | None:
    """The run config stored inside a checkpoint dict (``obj["config"]``: a YAML string or a dict with
    a ``student`` section, as voxelfm pre-training checkpoints hold), or ``None``."""
    if not isinstance(obj, Mapping):
        return None
    raw = obj.get("config")
    if isinstance(raw, str):
        from voxelfm.models.reference_config import parse_reference_yaml

        try:
            raw = parse_reference_yaml(raw, "embedded config")
        except ConfigError:
            return None
    if not isinstance(raw, Mapping) or not isinstance(raw.get("student"), Mapping):
        return None
    try:
        cfg, preset, _ = resolve_config(dict(raw))
    except ConfigError as exc:
        logger.warning("ignoring the config stored in the checkpoint: %s", exc)
        return None
    return cfg, preset, "stored in the checkpoint"


# ----------------------------------------------------------------------------- config inference
def infer_config(sd: Mapping[str, Tensor]) -> ViTConfig:
    """Infer the architecture from backbone state-dict shapes.

    Read from the shapes: ``embed_dim`` and ``patch_size`` (``patch_embed.proj.weight``), ``depth``
    (block indices), ``num_register_tokens``, the FFN type and ``mlp_ratio``, biases, LayerScale
    presence. ``num_heads`` cannot be read from weight shapes; it is taken from
    ``rope_embed.periods`` (``head_dim = 6 · len(periods)``) together with ``rope_base``; without
    that buffer ``num_heads = embed_dim / 72`` (head dim 72 as VoxelFM) and ``rope_base = 100``.

    Raises:
        CheckpointError: when the architecture cannot be determined (pass ``config=``).
    """
    w = sd.get("patch_embed.proj.weight")
    if w is None or w.ndim != 5 or w.shape[1] != 1:
        raise CheckpointError("cannot infer the architecture: no patch_embed.proj.weight [C, 1, p, p, p] "
                              "in the checkpoint; pass config= (a config.yaml, config.json or name)")
    C = int(w.shape[0])
    p = tuple(int(s) for s in w.shape[2:])
    if len(set(p)) != 1:
        raise CheckpointError(f"patch kernel {p} is not cubic; only cubic patches are supported")
    block_ids = sorted({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    if not block_ids or block_ids != list(range(len(block_ids))):
        raise CheckpointError(f"cannot infer depth: block indices {block_ids[:20]} are not 0..n-1")
    depth = len(block_ids)
    reg = sd.get("register_tokens")
    num_reg = int(reg.shape[1]) if reg is not None else 0

    if "blocks.0.mlp.fc1.weight" in sd:
        ffn, hidden = "mlp", int(sd["blocks.0.mlp.fc1.weight"].shape[0])
        ffn_bias = "blocks.0.mlp.fc1.bias" in sd
    elif "blocks.0.mlp.w12.weight" in sd:
        ffn, hidden = "swiglu", int(sd["blocks.0.mlp.w12.weight"].shape[0]) // 2
        ffn_bias = "blocks.0.mlp.w12.bias" in sd
    else:
        ffn, hidden, ffn_bias = "identity", 4 * C, True
    mlp_ratio = hidden / C
    if int(C * mlp_ratio) != hidden:  # guard against float round-down in int(C * ratio)
        mlp_ratio = math.nextafter(mlp_ratio, math.inf)

    periods = sd.get(_PERIODS_KEY)
    if periods is not None and periods.ndim == 1 and periods.numel() >= 1:
        pairs = int(periods.numel())
        head_dim = 6 * pairs
        if C % head_dim:
            raise CheckpointError(f"rope_embed.periods has {pairs} entries (head_dim {head_dim}) which does "
                                  f"not divide embed_dim {C}; pass config=")
        num_heads = C // head_dim
        rope_base = _infer_rope_base(periods.float(), pairs)
    elif C % 72 == 0:
        num_heads, rope_base = C // 72, 100.0
        logger.warning("checkpoint has no rope_embed.periods: assuming head_dim 72 (num_heads=%d) and "
                       "rope_base 100; pass config= if that is wrong", num_heads)
    else:
        raise CheckpointError(f"cannot infer num_heads for embed_dim {C}: the checkpoint has no "
                              "rope_embed.periods and embed_dim is not a multiple of 72; pass config= "
                              "(the run's config.yaml or a ViTConfig)")
    try:
        return ViTConfig(
            embed_dim=C, depth=depth, num_heads=num_heads, patch_size=p[0], mlp_ratio=mlp_ratio,
            ffn_layer=ffn, qkv_bias="blocks.0.attn.qkv.bias" in sd, proj_bias="blocks.0.attn.proj.bias" in sd,
            ffn_bias=ffn_bias, layerscale=1e-5 if "blocks.0.ls1.gamma" in sd else None,
            drop_path_rate=0.0, rope_base=rope_base, num_register_tokens=num_reg)
    except ConfigError as exc:
        raise CheckpointError(f"inferred an invalid architecture ({exc}); pass config=") from None


def _infer_rope_base(periods: Tensor, pairs: int) -> float:
    # periods[i] = base ** (i / pairs)  →  base = periods[-1] ** (pairs / (pairs - 1))
    if pairs < 2 or float(periods[-1]) <= 0:
        return 100.0
    base = float(periods[-1].double()) ** (pairs / (pairs - 1))
    rounded = float(f"{base:.6g}")
    i = torch.arange(pairs, dtype=torch.float32)
    if torch.allclose(rounded ** (2.0 * i / (2 * pairs)), periods, rtol=1e-5, atol=0):
        return rounded
    return base


# ----------------------------------------------------------------------------- strict loading
def _fmt_list(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (... and {len(items) - limit} more)" if len(items) > limit else "")


def key_problems(missing: list[str], unexpected: list[str], mismatched: list[str], *, limit: int = 8,
                 mismatch_limit: int = 5) -> str:
    """``"N missing key(s): a, b ...; M unexpected key(s): ...; K shape mismatch(es): ..."`` (one line)."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_fmt_list(missing, limit)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_fmt_list(unexpected, limit)}")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatch(es): {_fmt_list(mismatched, mismatch_limit)}")
    return "; ".join(parts)


def load_state_dict_strict(model: VisionTransformer3D, sd: Mapping[str, Tensor], *,
                           source: str = "checkpoint") -> None:
    """Load ``sd`` into ``model`` strictly, with a readable :class:`CheckpointError` on failure.

    A missing ``rope_embed.periods`` is regenerated from the model's config; a present one is loaded
    as is (like the reference), with a warning if it differs from the config's ``rope_base``.
    """
    expected = model.state_dict()
    sd = dict(sd)
    if _PERIODS_KEY not in sd and _PERIODS_KEY in expected:
        sd[_PERIODS_KEY] = model.rope_embed.compute_periods()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [f"{k} {list(sd[k].shape)} vs model {list(expected[k].shape)}"
                  for k in sd if k in expected and tuple(sd[k].shape) != tuple(expected[k].shape)]
    c = model.config
    arch = (f"embed_dim={c.embed_dim}, depth={c.depth}, num_heads={c.num_heads}, patch_size={c.patch_size}, "
            f"registers={c.num_register_tokens}, ffn={c.ffn_layer}, layerscale={c.layerscale is not None}")
    if missing or unexpected or mismatched:
        hint = ("the weights do not match the architecture; pass the run's config.yaml as config=, or omit "
                "config to infer it from the weights")
        err = CheckpointError(f"cannot load {source} into VisionTransformer3D({arch}): "
                              + key_problems(missing, unexpected, mismatched) + f" — {hint}")
        err.missing_keys, err.unexpected_keys, err.mismatched_keys = missing, unexpected, mismatched  # type: ignore[attr-defined]
        raise err
    if _PERIODS_KEY in expected:
        own = model.rope_embed.compute_periods()
        got = sd[_PERIODS_KEY].float()
        if not torch.allclose(got, own, rtol=1e-4, atol=0):
            # The stored buffer is what the weights were run with (the reference uses the loaded
            # buffer too), so it is kept; the config's rope_base only describes a fresh model.
            logger.warning("%s: rope_embed.periods %s... differ from those of rope_base=%g (%s...); "
                           "using the stored periods", source, [round(v, 4) for v in got[:3].tolist()],
                           c.rope_base, [round(v, 4) for v in own[:3].tolist()])
    model.load_state_dict(sd, strict=True)


# ----------------------------------------------------------------------------- locating files
def _iteration_of(path: Path, root: Path) -> int | None:
    numbers = re.findall(r"\d+", str(path.relative_to(root)))
    return int(numbers[-1]) if numbers else None


def find_reference_checkpoint(folder: str | os.PathLike[str]) -> Path:
    """The weights file of a reference run / Hugging Face-style folder.

    Looked up in this order (first group that exists wins): ``checkpoints/*.pth``, ``*.pth``,
    ``eval/training_*/teacher_checkpoint.pth`` (teacher dumps), then ``<iter>/checkpoint.pth``
    (training checkpoints). Within a group the highest iteration number in the path is taken;
    several un-numbered files are ambiguous (pass the file itself).
    """
    root = Path(folder)
    groups = [
        sorted(p for p in (root / "checkpoints").glob("*") if p.suffix in _PTH_SUFFIXES and p.is_file()),
        sorted(p for p in root.glob("*") if p.suffix in _PTH_SUFFIXES and p.is_file()),
        sorted(root.glob("eval/training_*/teacher_checkpoint.pth")),
        sorted(root.glob("*/checkpoint.pth")),
    ]
    for group in groups:
        if not group:
            continue
        if len(group) == 1:
            return group[0]
        numbered = [(it, p) for p in group if (it := _iteration_of(p, root)) is not None]
        if len(numbered) == len(group):
            numbered.sort(key=lambda t: t[0])
            if len(numbered) < 2 or numbered[-1][0] != numbered[-2][0]:
                return numbered[-1][1]
        raise CheckpointError(f"{root}: several checkpoint files ({_fmt_list([str(p.relative_to(root)) for p in group])}); "
                              "pass the one to load")
    raise CheckpointError(f"{root}: no {WEIGHTS_NAME}+{CONFIG_NAME} (voxelfm) and no .pth checkpoint "
                          "(checkpoints/*.pth, *.pth, eval/training_*/teacher_checkpoint.pth)")


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, CheckpointError)


# ----------------------------------------------------------------------------- load_backbone
_UNSET: Any = object()


def _family_name(source: Any, weights: Any) -> str | None:
    """The backbone family ``source`` names, if it is one (``load_backbone("merlin", weights=...)``)."""
    if not isinstance(source, str):
        return None
    from voxelfm.baselines.registry import FAMILY_MODULES

    name = source.strip().lower()
    if name not in FAMILY_MODULES:
        return None
    # an existing file/folder called like a family is a path unless weights= says otherwise
    return name if weights is not _UNSET or not Path(source).exists() else None


def load_backbone(source: str | os.PathLike[str] | Mapping[str, Any], *, config: ConfigLike | None = None,
                  device: str | torch.device = "cpu", weights: Any = _UNSET, **options: Any) -> Any:
    """Load a backbone (eval mode, on ``device``) from any supported source.

    Two forms:

    * ``load_backbone(NAME, weights=PATH_OR_DIR_OR_HUB_ID, **options)`` — a backbone family of
      :func:`voxelfm.baselines.family_names` (``voxelfm``, ``merlin``, ``ctfm``, ``fmcib``,
      ``m3d_clip``, ``radfm``, ``ct_clip``, ``clip2d``) with its released weights in their original
      layout; ``weights=None`` is a seeded random init (with a warning). ``voxelfm`` goes to the
      ViT loader below (``config=`` allowed). See ``docs/baselines.md``.
    * ``load_backbone(source, config=...)`` — the VoxelFM ViT, as documented below.

    Args:
        source: a weights file (reference ``.pth`` teacher dump or training checkpoint, bare state dict
            ``.pth``, ``model.safetensors``), a folder (written by :func:`save_backbone`, or a reference
            run / HF-style folder with ``config.yaml`` + ``checkpoints/*.pth`` or ``*.pth``), an
            in-memory checkpoint dict, or a config name (``vit_base``...) for random init (seeded with
            :data:`RANDOM_INIT_SEED`, so the same name always gives the same weights).
        config: the architecture: a reference ``config.yaml`` path (``student.*`` → ViTConfig,
            ``datasets[0].norm`` → ``model.preset``), a voxelfm ``config.json``, a :class:`ViTConfig`,
            a dict or a name. Default: the config stored with the weights (voxelfm folder, run folder's
            ``config.yaml``, a ``"config"`` entry inside the checkpoint dict as voxelfm pre-training
            writes), else inferred from the state-dict shapes (see :func:`infer_config`).
        device: where to put the model.

    Returns:
        :class:`VisionTransformer3D` in eval mode with ``drop_path_rate = 0`` (the teacher), its
        ``preset`` carrying the normalisation and ``source`` the provenance.

    Raises:
        CheckpointError: unreadable/unrecognised file, missing/unexpected keys, shape mismatches.
        ConfigError: invalid ``config``.
        FileNotFoundError: ``source`` is neither a file/folder nor a config name.

    Example::

        model = load_backbone("99999.pth", config="config.yaml")
        out = model(x)            # x: [B, D, H, W] normalised with model.preset.mean / .std
    """
    family = _family_name(source, weights)
    if family is not None:
        if family == "voxelfm":
            if options:
                raise ConfigError(f"voxelfm takes no backbone options ({', '.join(options)}); use config=")
            from voxelfm.baselines.voxelfm_vit import load as load_voxelfm

            return load_voxelfm(None if weights is _UNSET else weights, device=device, config=config)
        if config is not None:
            raise ConfigError(f"config= is for the VoxelFM ViT; {family} takes options instead "
                              "(see docs/baselines.md)")
        from voxelfm.baselines import load_baseline

        return load_baseline(family, None if weights is _UNSET else weights, device=device, **options)
    if weights is not _UNSET or options:
        from voxelfm.baselines.registry import family_names

        raise ConfigError(f"weights=/backbone options need a backbone name as the first argument "
                          f"({', '.join(family_names())}), got {source!r}")
    cfg: ViTConfig | None = None
    preset: Preset | None = None
    provenance: dict[str, Any] = {}
    cfg_desc = ""
    if config is not None:
        cfg, preset, cfg_desc = resolve_config(config)

    if isinstance(source, Mapping):
        sd, fmt, info = extract_backbone_state_dict(source)
        provenance.update(format=fmt, path=None, **info)
        stored = embedded_config(source)
        if stored is not None:
            if cfg is None:
                cfg, cfg_desc = stored[0], stored[2]
            if preset is None:
                preset = stored[1]
    else:
        path = Path(source)
        if not path.exists():
            if isinstance(source, str) and source in CONFIGS:
                rcfg, rpreset, _ = resolve_config(source)
                # Seeded, without touching the caller's RNG: a config name always means the same
                # weights, so a random-init baseline is reproducible and a resumed run is consistent.
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(RANDOM_INIT_SEED)
                    model = VisionTransformer3D(cfg if cfg is not None else rcfg,
                                                preset=preset if preset is not None else rpreset)
                model.source = {"format": "random-init", "config": source, "seed": RANDOM_INIT_SEED}
                return model.eval().to(device)
            raise FileNotFoundError(f"{source}: no such file or folder, and not a config name "
                                    f"({', '.join(config_names())})")
        sd, fmt, info, stored_cfg, stored_preset, weights_path = _load_path(path)
        provenance.update(format=fmt, path=str(weights_path), **info)
        if cfg is None and stored_cfg is not None:
            cfg, cfg_desc = stored_cfg[0], stored_cfg[1]
        if preset is None:
            preset = stored_preset

    if cfg is None:
        cfg = infer_config(sd)
        cfg_desc = "inferred from the weights"
        logger.info("architecture inferred from the weights: %s", cfg)
    cfg = cfg.replace(drop_path_rate=0.0)
    if preset is None:
        # A reference .pth carries no normalisation; the released config.yaml may differ from the
        # default config (REFERENCE.md §2.2: read it, do not hard-code). Say so, loudly.
        preset = Preset(name="default")
        warnings.warn(f"{provenance.get('path') or 'the state dict'}: no normalisation stored with the weights; "
                      f"using the reference default mean {preset.mean:g} / std {preset.std:g} HU — pass "
                      f"config= the config.yaml released with them (CLI: --config) to be sure",
                      UserWarning, stacklevel=2)
        provenance["normalisation"] = "assumed default (no config given)"
    model = VisionTransformer3D(cfg, preset=preset)
    load_state_dict_strict(model, sd, source=str(provenance.get("path") or "the state dict"))
    provenance["config_source"] = cfg_desc
    model.source = provenance
    return model.eval().to(device)


def _load_path(path: Path) -> tuple[dict[str, Tensor], str, dict[str, Any],
                                    tuple[ViTConfig, str] | None, Preset | None, Path]:
    """Read weights + any stored config/preset from a file or folder."""
    stored_cfg: tuple[ViTConfig, str] | None = None
    stored_preset: Preset | None = None
    if path.is_dir():
        if (path / WEIGHTS_NAME).is_file():
            path = path / WEIGHTS_NAME
        else:
            weights = find_reference_checkpoint(path)
            yaml_path = next((path / n for n in ("config.yaml", "config.yml") if (path / n).is_file()), None)
            if yaml_path is not None:
                c, stored_preset, _ = resolve_config(yaml_path)
                stored_cfg = (c, str(yaml_path))
            obj = read_checkpoint(weights)
            sd, fmt, info = extract_backbone_state_dict(obj)
            if stored_cfg is None and (emb := embedded_config(obj)) is not None:
                stored_cfg, stored_preset = (emb[0], emb[2]), emb[1]
            logger.info("loading %s (%s)", weights, fmt)
            return sd, fmt, info, stored_cfg, stored_preset, weights
    if path.suffix.lower() == ".json":  # a voxelfm config.json: load its folder
        return _load_path(path.parent)
    if path.suffix.lower() == ".safetensors":
        sd = read_checkpoint(path)
        meta_cfg = path.parent / CONFIG_NAME
        data: dict[str, Any] | None = None
        if meta_cfg.is_file():
            data = _read_json(meta_cfg)
        else:
            data = _safetensors_metadata_config(path)
        if data is not None:
            try:
                c, p, _ = resolve_config(data)
            except ConfigError as exc:
                raise CheckpointError(f"{meta_cfg}: invalid stored config ({exc})") from None
            stored_cfg, stored_preset = (c, str(meta_cfg if meta_cfg.is_file() else path)), p
        sd, _, info = extract_backbone_state_dict(sd)
        return sd, "voxelfm" if data is not None else "safetensors", info, stored_cfg, stored_preset, path
    obj = read_checkpoint(path)
    sd, fmt, info = extract_backbone_state_dict(obj)
    if (emb := embedded_config(obj)) is not None:
        stored_cfg, stored_preset = (emb[0], emb[2]), emb[1]
    return sd, fmt, info, stored_cfg, stored_preset, path


def _safetensors_metadata_config(path: Path) -> dict[str, Any] | None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format_voxelfm") != VOXELFM_FORMAT or "config" not in meta:
        return None
    data: dict[str, Any] = {"format": VOXELFM_FORMAT, "config": json.loads(meta["config"])}
    if "preset" in meta:
        data["preset"] = json.loads(meta["preset"])
    return data


# ----------------------------------------------------------------------------- saving
def _clean_state_dict(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def save_backbone(model: VisionTransformer3D, out_dir: str | os.PathLike[str], *,
                  provenance: dict[str, Any] | None = None, licence: str | None = None) -> Path:
    """Write ``model`` as a self-describing folder (each file atomically).

    Files: ``model.safetensors`` (the state dict, reference key names; config + preset also in its
    metadata), ``config.json`` (``format``, ``config`` = ViTConfig, ``preset`` = preprocessing with the
    normalisation, ``provenance``, ``licence``, parameter count) and ``README.md`` (model card).

    Args:
        model: the backbone.
        out_dir: the folder (created).
        provenance: extra provenance merged into ``model.source`` (e.g. training run, iteration).
        licence: licence text for the card (default: the weights keep their source's licence).

    Returns:
        ``out_dir`` as a Path. :func:`load_backbone` reads it back.
    """
    from safetensors.torch import save_file

    from voxelfm import __version__
    from voxelfm.utils import atomic_write, atomic_write_text

    if not isinstance(model, VisionTransformer3D):
        raise TypeError(f"save_backbone expects a VisionTransformer3D, got {type(model).__name__}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    tensors = _clean_state_dict(model.state_dict())
    n_params = model.num_parameters()
    prov = {k: v for k, v in dict(getattr(model, "source", {}) or {}).items() if v is not None}
    prov.update(provenance or {})
    prov.update(saved_by=f"voxelfm {__version__}",
                saved_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    doc = {
        "format": VOXELFM_FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": "VisionTransformer3D",
        "config": model.config.to_dict(),
        "preset": model.preset.to_dict(),
        "num_parameters": n_params,
        "input": "[B, D, H, W] float32, HU normalised as (HU - preset.mean) / preset.std",
        "outputs": ["x_norm_clstoken [B, C]", "x_norm_regtokens [B, R, C]",
                    "x_norm_patchtokens [B, N, C] in (d h w) order", "x_prenorm [B, 1+R+N, C]", "masks"],
        "provenance": prov,
        "licence": licence or LICENCE_NOTE,
        "intended_use": "research feature extraction from CT volumes; not for clinical use",
    }
    metadata = {"format_voxelfm": VOXELFM_FORMAT, "config": json.dumps(model.config.to_dict()),
                "preset": model.preset.to_json()}
    with atomic_write(out / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    atomic_write_text(out / CONFIG_NAME, json.dumps(doc, indent=2, sort_keys=False) + "\n")
    atomic_write_text(out / MODEL_CARD_NAME, _model_card(model, n_params, prov, licence or LICENCE_NOTE))
    return out


def _model_card(model: VisionTransformer3D, n_params: int, prov: dict[str, Any], licence: str) -> str:
    c, p = model.config, model.preset
    window = f"[{p.hu_window[0]:g}, {p.hu_window[1]:g}] HU" if p.hu_window else "reader-dependent (paper preset)"
    src = prov.get("path") or prov.get("format", "unknown")
    return f"""# VoxelFM-style 3D ViT backbone

Self-supervised 3D vision transformer for CT (DINOv2-style DINO + iBOT + KoLeo pre-training), saved by
voxelfm. Load with `voxelfm.load_backbone("<this folder>")`.

**Research features, not for clinical use.** The embeddings are meant for research (probing,
retrieval, report-generation experiments); they are not a medical device and must not drive
diagnosis or treatment.

## Intended use
Frozen feature extraction from CT volumes: a CLS embedding per volume, patch embeddings on the token
grid, register tokens; lightweight probes trained on top.

## Architecture
3D ViT, embed_dim {c.embed_dim}, depth {c.depth}, heads {c.num_heads} (head dim {c.head_dim}), cubic patch
{c.patch_size}, FFN {c.ffn_layer} (ratio {c.mlp_ratio:g}), {c.num_register_tokens} register tokens, LayerScale
{c.layerscale if c.layerscale is not None else "off"}, 3D RoPE (base {c.rope_base:g}) on patch tokens, no absolute
position embedding. {n_params:,} parameters.

## Preprocessing
Preset `{p.name}`: HU window {window}, isotropic resampling (finest spacing, at least {p.min_spacing_mm:g} mm),
optional background crop, then normalisation `(HU - ({p.mean:g})) / {p.std:g}`. `voxelfm.extract_features`
applies it (`model.preset`).

## Input / output
- Input: `[B, D, H, W]` float32, normalised as above; each side at least {c.patch_size} voxels; trailing voxels
  beyond the last full patch are ignored. Token grid `(D//{c.patch_size}, H//{c.patch_size}, W//{c.patch_size})`.
- Output dict: `x_norm_clstoken [B, {c.embed_dim}]`, `x_norm_regtokens [B, {c.num_register_tokens}, {c.embed_dim}]`,
  `x_norm_patchtokens [B, N, {c.embed_dim}]` (N = d·h·w, (d h w) order), `x_prenorm`, `masks`.

## Provenance
Source: {src}. Details in `config.json` (`provenance`).

## Licence
{licence}
"""


def _head_state_dict(dino_head: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    sd = dino_head.state_dict() if isinstance(dino_head, nn.Module) else dict(dino_head)
    out = {}
    for k, v in sd.items():
        k = str(k).replace("_orig_mod.", "").replace("module.", "")
        if k.startswith("dino_head."):
            k = k[len("dino_head."):]
        out[k] = v
    return out


def save_reference_teacher(path: str | os.PathLike[str], backbone: nn.Module | Mapping[str, Tensor],
                           dino_head: nn.Module | Mapping[str, Tensor] | None = None) -> Path:
    """Write reference format 1, ``{"teacher": {"backbone.<key>", "dino_head.<key>"}}``, atomically.

    This is the layout of the reference evaluation dump and of the released ``99999.pth``; the
    reference ``build_model`` and :func:`load_backbone` read it. Tensors are moved to CPU.

    Args:
        path: output ``.pth`` file.
        backbone: the backbone module (DDP/compile wrappers are unwrapped) or its state dict (prefixes
            ``module.`` / ``backbone.`` removed).
        dino_head: optional DINO head module or state dict, stored under ``dino_head.``.
    """
    from voxelfm.utils import atomic_write

    if isinstance(backbone, nn.Module):
        inner = getattr(backbone, "module", backbone)
        inner = getattr(inner, "_orig_mod", inner)
        sd = inner.state_dict()
    elif isinstance(backbone, Mapping):
        sd = backbone
    else:
        raise TypeError(f"backbone must be an nn.Module or a state dict, got {type(backbone).__name__}")
    sd = _backbone_only(sd)
    if not _is_tensor_dict(sd):
        raise CheckpointError("backbone state dict is empty or holds non-tensor values")
    teacher = {f"backbone.{k}": v for k, v in _clean_state_dict(sd).items()}
    if dino_head is not None:
        teacher.update({f"dino_head.{k}": v for k, v in _clean_state_dict(_head_state_dict(dino_head)).items()})
    target = Path(path)
    with atomic_write(target) as tmp:
        torch.save({"teacher": teacher}, tmp)
    return target
