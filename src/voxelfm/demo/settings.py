"""What the demo does, as data: cohort size, pre-training budget, extraction and probe settings.

Two presets: the default demo (≈ 400 phantom CTs, ≈ 7 minutes of pre-training, the full probe
suite; ≤ 15 minutes on 2 CPU cores) and ``quick`` (≈ 48 CTs, under a minute of pre-training,
lighter probes; ≤ 3 minutes). Every field can be overridden; :meth:`DemoSettings.stage_settings`
gives the part of the settings each stage depends on, so a re-run knows which finished stages it
may reuse.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DemoSettings", "STAGES", "DEFAULT_OUTPUT", "DEMO_GRID"]

#: default output folder of ``voxelfm demo``
DEFAULT_OUTPUT = "voxelfm-demo"

#: stage names in running order (``reports`` only runs with ``with_reports``)
STAGES: tuple[str, ...] = ("phantoms", "prepare", "pretrain", "extract_pretrained", "extract_random",
                           "probes", "baselines", "reports", "report")

#: the other CT foundation models ``voxelfm demo --baselines`` adds, as random-init backbones with
#: reduced input sizes (size options of :func:`voxelfm.load_backbone`): at their original input sizes
#: (Merlin 224×224×160, CT-CLIP 240×480×480, RadFM 512×512×64 ...) 200 scans would take about an
#: hour on 2 CPU cores, and random weights make them a pipeline check at any size. Left out: FMCIB
#: (it embeds lesion crops at seed points, not whole scans) and CT-FM (it has no fixed input size: it
#: runs on the whole scan resampled to 3 × 1 × 1 mm, ≈ 40 s per demo phantom on 2 cores).
DEMO_BASELINES: dict[str, dict[str, Any]] = {
    "merlin": {"input_size": [64, 64, 32]},
    "m3d_clip": {"img_size": [16, 64, 64]},
    "radfm": {"image_size": 128, "max_depth": 16},
    "ct_clip": {"image_size": 80, "depth_size": 40},
    "clip2d": {"slice_stride": 24},
}

#: the demo's model grid, on top of the ``tiny`` recipe: 16-voxel patches on 64³-voxel global crops
#: (≈ 5.5-mm voxels of a whole phantom) instead of 8-voxel patches on 32³ (≈ 11 mm). The token count
#: and so the transformer's cost stay the same (64 tokens, one token ≈ 88 mm), but the patch embedding
#: sees every voxel at twice the resolution: findings of 12-50 mm are no longer blurred away before
#: any backbone sees them, and in the same 7 minutes the pre-trained backbone separates cardiomegaly,
#: effusion and organ boundaries far better than random init (docs/demo.md, "Does the default demo
#: show pre-training beating random init?").
DEMO_GRID: tuple[str, ...] = ("student.patch_size=16", "crops.global_crops_size=[64,64,64]")

#: epochs of the token heads in the default demo (the probes' own defaults are sized for larger runs);
#: segmentation dominates the probe stage: ≈ 0.02 s per scan and epoch on one quiet core
DEFAULT_PROBE_EPOCHS: dict[str, int] = {"attentive": 25, "localisation": 30, "segmentation": 20}

#: CT-RATE style findings, regressions and survival targets of the phantom cohort the suite uses
REGRESSION_TARGETS: tuple[str, ...] = ("fev1_percent", "lung_volume_ml")


@dataclass(frozen=True)
class DemoSettings:
    """Settings of one demo run (see :meth:`create` for the two presets).

    Attributes:
        cases: phantom CT scans to generate (≥ 24; patient-grouped 60/20/20 splits).
        seed: seed of the cohort, the random-init backbone and the probes' data order.
        quick: the ≈ 2-minute preset (fewer cases, shorter pre-training, lighter probes).
        pretrain_minutes: wall-time budget of pre-training in minutes (resumed runs count the
            time already spent).
        pretrain_config: pre-training config name or YAML path (:func:`voxelfm.ssl.pretrain`).
        pretrain_overrides: ``key=value`` overrides of that config (default :data:`DEMO_GRID`;
            give ``()`` for the plain recipe).
        max_patches: token budget of extraction (each scan is resized to fit it). ``None``: the
            tokens of one global pre-training crop (64 for ``tiny``), the scale the model was
            trained at (docs/pretraining.md).
        crop_background: crop the air around the body before resampling (prepare and extract).
        with_reports: run the report-generation stage (projector + LoRA on a small LM).
        workers: processes for phantom generation / preparation and background readers for
            extraction (``None``: the CPU count).
        n_resamples: bootstrap resamples for confidence intervals and paired tests.
        probe_epochs: per-head epoch overrides (``{"segmentation": 15}``) on top of the probe
            defaults of :mod:`voxelfm.probes`.
        fractions: training-data fractions of the data-fraction curve (lead finding).
        pca_cases: scans shown as PCA-of-patch-token RGB images.
        protocol: how probes are evaluated: ``"cv"`` (default: ``folds``-fold cross-validation
            grouped by patient, out-of-fold predictions of every scan pooled, so CIs and paired tests
            use the whole cohort) or ``"split"`` (the cohort's held-out test split only).
        folds: cross-validation folds (≥ 3; one tests, the next selects the epoch, the rest train).
        random_seeds: random-init backbones (seeds ``seed``, ``seed + 1``, ...) compared against the
            pre-trained one; the report averages them and calls a row significant only when the
            pre-trained backbone beats every one of them.
        segmentation_repeats: organ-segmentation decoders trained per backbone (seeds ``s``,
            ``s + 1``, ...), whose per-scan Dice are averaged before backbones are compared: one
            decoder's Dice moves with its training seed by as much as the backbones differ
            (docs/demo.md, "Organ segmentation").
        probe_workers: probe runs trained at once, one process each (``None``: ``workers``).
        baselines: other CT foundation model families (keys of :data:`DEMO_BASELINES`) compared,
            random-init, with the pre-trained and random-init ViT in one ``voxelfm compare`` table
            (a pipeline check of the comparison, not a result).
    """

    cases: int = 400
    seed: int = 0
    quick: bool = False
    pretrain_minutes: float = 7.0
    pretrain_config: str = "tiny"
    pretrain_overrides: tuple[str, ...] = DEMO_GRID
    max_patches: int | None = None
    crop_background: bool = True
    with_reports: bool = False
    workers: int | None = None
    n_resamples: int = 1000
    probe_epochs: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PROBE_EPOCHS))
    fractions: tuple[float, ...] = (0.5, 1.0)
    pca_cases: int = 1
    protocol: str = "cv"
    folds: int = 5
    random_seeds: int = 2
    segmentation_repeats: int = 2
    probe_workers: int | None = None
    baselines: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if int(self.cases) < 24:
            raise ValueError(f"the demo needs at least 24 cases (train/val/test splits with both classes), "
                             f"got {self.cases}")
        if not float(self.pretrain_minutes) > 0:
            raise ValueError(f"pretrain_minutes must be > 0, got {self.pretrain_minutes}")
        if self.workers is not None and int(self.workers) < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.max_patches is not None and int(self.max_patches) < 1:
            raise ValueError(f"max_patches must be >= 1, got {self.max_patches}")
        if int(self.n_resamples) < 0:
            raise ValueError(f"n_resamples must be >= 0, got {self.n_resamples}")
        if not self.fractions or any(not 0 < float(f) <= 1 for f in self.fractions):
            raise ValueError(f"fractions must be in (0, 1], got {self.fractions}")
        if self.protocol not in ("cv", "split"):
            raise ValueError(f"protocol must be 'cv' or 'split', got {self.protocol!r}")
        if int(self.folds) < 3:
            raise ValueError(f"folds must be >= 3, got {self.folds}")
        if int(self.random_seeds) < 1:
            raise ValueError(f"random_seeds must be >= 1, got {self.random_seeds}")
        if int(self.segmentation_repeats) < 1:
            raise ValueError(f"segmentation_repeats must be >= 1, got {self.segmentation_repeats}")
        if self.probe_workers is not None and int(self.probe_workers) < 1:
            raise ValueError(f"probe_workers must be >= 1, got {self.probe_workers}")
        unknown = [b for b in self.baselines if b not in DEMO_BASELINES]
        if unknown:
            raise ValueError(f"unknown demo baseline(s) {', '.join(map(repr, unknown))}; "
                             f"choose from {', '.join(DEMO_BASELINES)}")

    @classmethod
    def create(cls, *, quick: bool = False, cases: int | None = None, pretrain_minutes: float | None = None,
               with_reports: bool | None = None, workers: int | None = None, seed: int = 0,
               **overrides: Any) -> "DemoSettings":
        """The default (or ``quick``) preset with the given values changed.

        ``None`` keeps the preset's value. Unknown keyword names raise ``TypeError``.
        """
        base: dict[str, Any] = {}
        if quick:
            base = dict(cases=48, pretrain_minutes=0.75, n_resamples=200, fractions=(0.5, 1.0), folds=3,
                        random_seeds=1, segmentation_repeats=1,
                        probe_epochs={"linear": 60, "attentive": 15, "localisation": 20, "segmentation": 12,
                                      "cox": 150})
        base.update(quick=bool(quick), seed=int(seed))
        if cases is not None:
            base["cases"] = int(cases)
        if pretrain_minutes is not None:
            base["pretrain_minutes"] = float(pretrain_minutes)
        if with_reports is not None:
            base["with_reports"] = bool(with_reports)
        if workers is not None:
            base["workers"] = int(workers)
        base.update(overrides)
        return cls(**base)

    @property
    def n_workers(self) -> int:
        """Resolved worker count (``workers`` or the CPU count)."""
        return int(self.workers) if self.workers else max(1, os.cpu_count() or 1)

    @property
    def n_probe_workers(self) -> int:
        """Resolved probe-run processes (``probe_workers`` or :attr:`n_workers`)."""
        return int(self.probe_workers) if self.probe_workers else self.n_workers

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["pretrain_overrides"] = list(self.pretrain_overrides)
        d["fractions"] = list(self.fractions)
        d["baselines"] = list(self.baselines)
        return d

    def stage_settings(self, stage: str) -> dict[str, Any]:
        """The settings ``stage`` depends on (beyond its upstream stages); a change re-runs it."""
        if stage == "phantoms":
            return {"cases": int(self.cases), "seed": int(self.seed), "size": "demo", "format": "nifti"}
        if stage == "prepare":
            return {"preset": "default", "crop_background": bool(self.crop_background)}
        if stage == "pretrain":
            return {"config": str(self.pretrain_config), "overrides": list(self.pretrain_overrides),
                    "minutes": float(self.pretrain_minutes), "seed": int(self.seed)}
        if stage in ("extract_pretrained", "extract_random"):
            d = {"max_patches": self.max_patches, "crop_background": bool(self.crop_background),
                 "seed": int(self.seed)}
            if stage == "extract_random":
                d["random_seeds"] = int(self.random_seeds)
            return d
        if stage == "probes":
            return {"n_resamples": int(self.n_resamples), "probe_epochs": dict(sorted(self.probe_epochs.items())),
                    "fractions": [float(f) for f in self.fractions], "pca_cases": int(self.pca_cases),
                    "seed": int(self.seed), "quick": bool(self.quick), "protocol": str(self.protocol),
                    "folds": int(self.folds), "segmentation_repeats": int(self.segmentation_repeats)}
        if stage == "baselines":
            return {"baselines": {b: DEMO_BASELINES[b] for b in self.baselines}, "seed": int(self.seed),
                    "n_resamples": int(self.n_resamples), "protocol": str(self.protocol), "folds": int(self.folds)}
        if stage == "reports":
            return {"quick": bool(self.quick), "seed": int(self.seed), "grounding": "probe", "repair": True}
        if stage == "report":
            return {}
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
