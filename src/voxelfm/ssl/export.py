"""Export the pre-trained teacher: a voxelfm backbone folder and the reference teacher dump.

* :func:`teacher_backbone` — the EMA teacher backbone of a run / checkpoint / live model, with its
  ``preset`` carrying the run's normalisation (``datasets[0].norm``) and HU range (``pixel_range``).
* :func:`export_teacher` — writes ``OUT/`` with :func:`voxelfm.save_backbone` (``model.safetensors``,
  ``config.json``, model card) and ``OUT/reference/teacher_checkpoint.pth`` +
  ``OUT/reference/config.yaml`` in the reference layout (``{"teacher": {backbone.*, dino_head.*}}``,
  what the reference ``build_model`` and the released ``99999.pth`` use). :func:`voxelfm.load_backbone`
  loads either folder.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from voxelfm.errors import CheckpointError

__all__ = ["teacher_backbone", "export_teacher", "write_reference_teacher"]


def _config_from_state(state: dict[str, Any]) -> Any:
    from voxelfm.ssl.config import load_config

    return load_config(yaml.safe_load(state["config"]))


def _resolve(source: Any) -> tuple[dict[str, Any], Any, int | None]:
    """``(model_state_dict, config, iteration)`` from a run folder, checkpoint file or dict."""
    from voxelfm.ssl.checkpoint import find_latest_checkpoint, load_checkpoint

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            latest = find_latest_checkpoint(path)
            if latest is None:
                raise CheckpointError(f"{path}: no pre-training checkpoint (checkpoints/step_*.pth)")
            path = latest
        state = load_checkpoint(path)
    elif isinstance(source, dict):
        state = source
    else:
        raise TypeError(f"source must be a run folder, a checkpoint path or dict, got {type(source).__name__}")
    return state["model"], _config_from_state(state), state.get("iteration")


def teacher_backbone(source: Any) -> nn.Module:
    """The teacher backbone (eval mode, CPU) of a run folder, a checkpoint, or an ``SSLMetaArch``."""
    from voxelfm.models import build_backbone, read_reference_config
    from voxelfm.ssl.meta_arch import SSLMetaArch, unwrap

    if isinstance(source, SSLMetaArch):
        live = unwrap(source.teacher.backbone)
        vit_cfg = live.config.replace(drop_path_rate=0.0)
        model = build_backbone(vit_cfg)
        model.load_state_dict({k: v.detach().cpu() for k, v in live.state_dict().items()})
        model.preset = live.preset
        model.source = {"format": "voxelfm-ssl", "role": "teacher"}
        return model.eval()
    sd, cfg, iteration = _resolve(source)
    vit_cfg, mean, std = read_reference_config(cfg.to_dict())
    model = build_backbone(vit_cfg.replace(drop_path_rate=0.0))
    prefix = "teacher.backbone."
    teacher = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not teacher:
        raise CheckpointError("checkpoint holds no teacher.backbone.* weights")
    model.load_state_dict(teacher, strict=True)
    ds = cfg.datasets[0]
    model.preset = dataclasses.replace(model.preset, mean=float(mean), std=float(std),
                                       hu_window=(float(ds.pixel_range.lower), float(ds.pixel_range.upper)))
    model.source = {"format": "voxelfm-ssl", "role": "teacher", "iteration": iteration}
    return model.eval()


def _teacher_head_state(source: Any) -> dict[str, torch.Tensor] | None:
    from voxelfm.ssl.meta_arch import SSLMetaArch, unwrap

    if isinstance(source, SSLMetaArch):
        return {k: v.detach().cpu() for k, v in unwrap(source.teacher.dino_head).state_dict().items()}
    sd, _, _ = _resolve(source)
    head = {k[len("teacher.dino_head."):]: v for k, v in sd.items() if k.startswith("teacher.dino_head.")}
    return head or None


def write_reference_teacher(folder: str | os.PathLike[str], backbone: nn.Module,
                            dino_head: dict[str, torch.Tensor] | nn.Module | None,
                            config: Any) -> Path:
    """``folder/teacher_checkpoint.pth`` (reference format 1) + ``folder/config.yaml`` (the run config).

    Returns the ``.pth`` path.
    """
    from voxelfm.models.checkpoint import save_reference_teacher
    from voxelfm.ssl.config import save_config

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = save_reference_teacher(folder / "teacher_checkpoint.pth", backbone, dino_head)
    save_config(config, folder / "config.yaml")
    return path


def export_teacher(source: Any, out_dir: str | os.PathLike[str], *, reference: bool = True,
                   provenance: dict[str, Any] | None = None) -> Path:
    """Write the teacher of ``source`` (run folder, checkpoint path/dict or ``SSLMetaArch``).

    Args:
        source: where the teacher comes from.
        out_dir: folder for :func:`voxelfm.save_backbone`; ``out_dir/reference/`` gets the reference
            teacher dump and config when ``reference``.
        reference: also write the reference layout.
        provenance: extra provenance for the model card / ``config.json``.

    Returns:
        ``out_dir``.
    """
    from voxelfm.models import save_backbone
    from voxelfm.ssl.meta_arch import SSLMetaArch

    model = teacher_backbone(source)
    out = Path(out_dir)
    prov = {"trained_with": "voxelfm pretrain (DINO + iBOT + KoLeo)", **(provenance or {})}
    if model.source.get("iteration") is not None:
        prov.setdefault("iteration", model.source["iteration"])
    save_backbone(model, out, provenance=prov)
    if reference:
        cfg = source.cfg if isinstance(source, SSLMetaArch) else _resolve(source)[1]
        write_reference_teacher(out / "reference", model, _teacher_head_state(source), cfg)
    return out
