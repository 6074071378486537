"""Self-supervised pre-training of the 3D ViT: DINO + iBOT + KoLeo (DINOv2 recipe, REFERENCE §3).

Python API::

    from voxelfm.ssl import pretrain
    backbone_dir = pretrain("tiny", data="store/", output="runs/tiny", max_minutes=5)
    model = voxelfm.load_backbone(backbone_dir)

Modules (one concept each): ``transforms`` (RandomCrop3D, Flip, Window, Norm), ``augmentations``
(multi-crop), ``masking`` (iBOT block masks), ``collate``, ``losses`` (DINOLoss, iBOTPatchLoss,
KoLeoLoss), ``meta_arch`` (teacher/student), ``schedules``, ``param_groups``, ``dataset``,
``sampler``, ``checkpoint``, ``distributed``, ``trainer``, ``config``, ``knn_monitor``, ``export``.
Heavy imports are lazy.
"""

from __future__ import annotations

from voxelfm.utils.lazy_exports import lazy_exports

_LAZY: dict[str, str] = {
    "pretrain": "voxelfm.ssl.trainer",
    "Trainer": "voxelfm.ssl.trainer",
    "load_config": "voxelfm.ssl.config",
    "Config": "voxelfm.ssl.config",
    "SSLMetaArch": "voxelfm.ssl.meta_arch",
    "DataAugmentationDINO": "voxelfm.ssl.augmentations",
    "MaskingGenerator3D": "voxelfm.ssl.masking",
    "collate_data_and_cast": "voxelfm.ssl.collate",
    "PretrainDataset": "voxelfm.ssl.dataset",
    "InfiniteShardedSampler": "voxelfm.ssl.sampler",
    "export_teacher": "voxelfm.ssl.export",
    "teacher_backbone": "voxelfm.ssl.export",
    "KnnMonitor": "voxelfm.ssl.knn_monitor",
    "DINOLoss": "voxelfm.ssl.losses",
    "iBOTPatchLoss": "voxelfm.ssl.losses",
    "KoLeoLoss": "voxelfm.ssl.losses",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
