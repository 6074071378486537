"""voxelfm: 3D CT foundation models as frozen feature extractors.

Read any CT (:func:`read_volume`), load the VoxelFM 3D ViT or a random-init config
(:func:`load_backbone`), extract CLS / patch / register embeddings at any volume size
(:func:`extract_features`), pre-train with DINO + iBOT + KoLeo (:mod:`voxelfm.ssl`), and evaluate
frozen features with probes and honest statistics (:mod:`voxelfm.probes`, :mod:`voxelfm.stats`).

Research software: outputs are research features, not for clinical use.

The public names below are imported lazily so ``import voxelfm`` stays fast and importing
:mod:`voxelfm.stats` never imports torch.
"""

from __future__ import annotations

from voxelfm.utils.lazy_exports import lazy_exports

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    # io
    "Volume": "voxelfm.io",
    "read_volume": "voxelfm.io",
    "find_dicom_series": "voxelfm.io",
    "collect_inputs": "voxelfm.io",
    "InputItem": "voxelfm.io",
    "VolumeReadWarning": "voxelfm.io",
    # errors
    "VoxelFMError": "voxelfm.errors",
    "VolumeReadError": "voxelfm.errors",
    "CheckpointError": "voxelfm.errors",
    "ConfigError": "voxelfm.errors",
    # preprocess
    "Preset": "voxelfm.preprocess",
    "get_preset": "voxelfm.preprocess",
    "preprocess_volume": "voxelfm.preprocess",
    "apply_geometry_to_labels": "voxelfm.preprocess",
    "apply_geometry_to_points": "voxelfm.preprocess",
    # models
    "load_backbone": "voxelfm.models",
    "save_backbone": "voxelfm.models",
    "build_backbone": "voxelfm.models",
    "ViTConfig": "voxelfm.models",
    "VisionTransformer3D": "voxelfm.models",
    # data
    "generate_cohort": "voxelfm.data.phantoms",
    "VolumeStore": "voxelfm.data.volume_store",
    "prepare_volumes": "voxelfm.data.volume_store",
    # stats
    "Estimate": "voxelfm.stats",
    # probes
    "train_probe": "voxelfm.probes",
    "run_suite": "voxelfm.probes",
    "ProbeRun": "voxelfm.probes",
    # report generation
    "label_report": "voxelfm.reportgen",
    "run_report_experiment": "voxelfm.reportgen",
    "ReportModel": "voxelfm.reportgen",
    # demo
    "run_demo": "voxelfm.demo",
    # inference
    "Features": "voxelfm.inference",
    "EmbeddingStore": "voxelfm.inference",
    "extract_features": "voxelfm.inference",
    "extract_batch": "voxelfm.inference",
    "inference_scope": "voxelfm.inference",
}

__all__ = sorted(_LAZY) + ["__version__"]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
