"""Figures for probe results (matplotlib, Agg backend, PNG).

* :func:`roc_figure` — ROC curves of one binary task, one curve per backbone (AUROC and CI in the
  legend);
* :func:`fraction_figure` — primary metric against the training-data fraction, per backbone,
  with CI bars (learning curves over nested subsets);
* :func:`cls_vs_patch_figure` — class-token heads against patch-token heads per task and backbone;
* :func:`pairwise_figure` — the paired tests between every pair of backbones: one matrix per row of
  the comparison table, coloured by Holm-adjusted p, annotated with the metric difference;
* :func:`pca_rgb_figure` — the paper's Figure S4 analogue: a 3-component PCA of one scan's patch
  tokens mapped to RGB, upsampled to the model-input grid and shown beside the preprocessed CT in
  three planes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["cls_vs_patch_figure", "fraction_figure", "pairwise_figure", "pca_rgb_figure", "pca_rgb_tokens",
           "roc_figure"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    from voxelfm.utils import atomic_write

    path = Path(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    _plt().close(fig)
    return path


def roc_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike[str], *,
               title: str = "", labels: Mapping[str, str] | None = None) -> Path:
    """ROC curves, one per model.

    Args:
        curves: name → ``(y_true [N] 0/1, score [N])`` (test split).
        path: PNG to write.
        title: figure title.
        labels: optional legend text per name (e.g. ``"pretrained AUROC 0.91 [0.85, 0.96]"``).
    """
    from sklearn.metrics import roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    for name, (y, s) in curves.items():
        y = np.asarray(y).astype(int)
        if y.min() == y.max():
            continue
        fpr, tpr, _ = roc_curve(y, np.asarray(s, dtype=float))
        ax.plot(fpr, tpr, lw=1.6, label=(labels or {}).get(name, name))
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
    ax.set(xlabel="1 − specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="lower right", fontsize=7, frameon=False)
    ax.set_aspect("equal")
    return _save(fig, path)


def fraction_figure(rows: pd.DataFrame, path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Learning curves: primary metric vs training fraction.

    Args:
        rows: columns ``panel`` (one subplot each, e.g. ``"lung_nodule · linear/cls"``), ``backbone``,
            ``fraction``, ``value``, ``ci_low``, ``ci_high``, ``metric``.
    """
    plt = _plt()
    panels = list(dict.fromkeys(rows["panel"]))
    n = len(panels)
    cols = min(3, max(1, n))
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.0 * cols, 3.2 * nrows), squeeze=False)
    for ax, panel in zip(axes.ravel(), panels):
        sub = rows[rows["panel"] == panel]
        groups = list(sub.groupby("backbone", sort=False))
        for k, (name, g) in enumerate(groups):
            g = g.sort_values("fraction")
            lo = (g["value"] - g["ci_low"]).clip(lower=0).fillna(0)
            hi = (g["ci_high"] - g["value"]).clip(lower=0).fillna(0)
            dodge = 1.0 + 0.04 * (k - (len(groups) - 1) / 2)  # side by side on the log axis
            ax.errorbar(g["fraction"] * dodge, g["value"], yerr=[lo, hi], marker="o", ms=4, capsize=3,
                        label=str(name))
        ax.set_xscale("log")
        fr = sorted(sub["fraction"].unique())
        ax.set_xticks(fr)
        ax.set_xticklabels([f"{f:g}" for f in fr])
        ax.minorticks_off()
        ax.set(title=panel, xlabel="training fraction", ylabel=str(sub["metric"].iloc[0]))
        ax.legend(fontsize=7, frameon=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def cls_vs_patch_figure(rows: pd.DataFrame, path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Grouped bars: primary metric of class-token vs patch-token probes per task and backbone.

    Args:
        rows: columns ``task_name``, ``backbone``, ``kind`` (``"class token"`` / ``"patch tokens"``),
            ``value``, ``ci_low``, ``ci_high``, ``metric``.
    """
    plt = _plt()
    tasks = list(dict.fromkeys(rows["task_name"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.6), squeeze=False)
    for ax, t in zip(axes.ravel(), tasks):
        sub = rows[rows["task_name"] == t]
        backbones = list(dict.fromkeys(sub["backbone"]))
        kinds = list(dict.fromkeys(sub["kind"]))
        width = 0.8 / max(1, len(kinds))
        for k, kind in enumerate(kinds):
            vals, lo, hi = [], [], []
            for b in backbones:
                r = sub[(sub["backbone"] == b) & (sub["kind"] == kind)]
                v = float(r["value"].iloc[0]) if len(r) else np.nan
                vals.append(v)
                lo.append(max(0.0, v - float(r["ci_low"].iloc[0])) if len(r) and np.isfinite(r["ci_low"].iloc[0]) else 0)
                hi.append(max(0.0, float(r["ci_high"].iloc[0]) - v) if len(r) and np.isfinite(r["ci_high"].iloc[0]) else 0)
            x = np.arange(len(backbones)) + (k - (len(kinds) - 1) / 2) * width
            ax.bar(x, vals, width, yerr=[lo, hi], capsize=3, label=kind, color=f"C{k}")
        ax.set_xticks(np.arange(len(backbones)))
        ax.set_xticklabels(backbones, rotation=20, fontsize=8)
        ax.set(title=t, ylabel=str(sub["metric"].iloc[0]))
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.93 if title else 1.0))  # one legend, above the panels
    if title:
        fig.suptitle(title, y=1.0)
    fig.tight_layout(rect=(0, 0, 1, 0.88))
    return _save(fig, path)


def pairwise_figure(comparisons: pd.DataFrame, backbones: Sequence[str], path: str | os.PathLike[str], *,
                    alpha: float = 0.05, title: str = "") -> Path:
    """Paired tests between every pair of backbones: one matrix per (task, probe, fraction).

    Cell (row ``i``, column ``j``): ``metric(i) − metric(j)`` and the Holm-adjusted p, coloured by
    ``−log10 p``; significant cells (p < ``alpha``) are framed. The panel title gives the metric
    and whether higher (↑) or lower (↓) is better.

    Args:
        comparisons: columns ``task_name, head, feature, fraction, metric, backbone_a, backbone_b,
            diff, p_holm`` (the suite's comparisons) and ``higher_is_better`` (bool).
        backbones: matrix order.
    """
    plt = _plt()
    keys = list(dict.fromkeys(zip(comparisons["task_name"], comparisons["head"], comparisons["feature"],
                                  comparisons["fraction"])))
    k = len(backbones)
    ncol = min(3, max(1, len(keys)))
    nrow = max(1, math.ceil(len(keys) / ncol))
    side = 0.6 * k + 1.8
    fig, axes = plt.subplots(nrow, ncol, figsize=(side * ncol + 1.2, side * nrow), squeeze=False,
                             layout="constrained")
    index = {b: i for i, b in enumerate(backbones)}
    vmax = 4.0  # -log10(1e-4)
    image = None
    for ax, key in zip(axes.ravel(), keys):
        g = comparisons[(comparisons["task_name"] == key[0]) & (comparisons["head"] == key[1])
                        & (comparisons["feature"] == key[2]) & (comparisons["fraction"] == key[3])]
        mat = np.full((k, k), np.nan)
        for _, r in g.iterrows():
            a, b = index.get(r["backbone_a"]), index.get(r["backbone_b"])
            if a is None or b is None or not np.isfinite(r["p_holm"]):
                continue
            d = float(r["diff"])  # metric(a) - metric(b)
            p = float(r["p_holm"])
            mat[a, b] = mat[b, a] = min(vmax, -math.log10(max(p, 1e-300)))
            for i, j, dd in ((a, b, d), (b, a, -d)):
                ax.text(j, i, f"{dd:+.3f}\np={p:.3f}" if p >= 0.001 else f"{dd:+.3f}\np<.001",
                        ha="center", va="center", fontsize=6, color="white" if mat[a, b] > 2.5 else "black")
                if p < alpha:
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=1.5, color="black"))
        image = ax.imshow(mat, cmap="Oranges", vmin=0, vmax=vmax)
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
        ax.set_xticklabels(backbones, rotation=30, ha="right", fontsize=7)
        ax.set_yticklabels(backbones, fontsize=7)
        metric = ""
        if len(g):
            metric = f"{g['metric'].iloc[0]} {'↑' if bool(g['higher_is_better'].iloc[0]) else '↓'}"
        frac = f", f={key[3]:g}" if key[3] != 1 else ""
        ax.set_title(f"{key[0]} ({key[1]}/{key[2]}{frac})\n{metric}: row − column", fontsize=8)
    for ax in axes.ravel()[len(keys):]:
        ax.axis("off")
    if image is not None:
        bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6)
        bar.set_label("−log10 Holm-adjusted p (framed: p < %g)" % alpha, fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------- PCA
def pca_rgb_tokens(patch: np.ndarray, foreground: np.ndarray | None = None, *, seed: int = 0,
                   quantiles: tuple[float, float] = (0.01, 0.99)) -> np.ndarray:
    """Map patch tokens ``[d, h, w, C]`` to RGB ``[d, h, w, 3]`` in [0, 1] with a 3-component PCA.

    The PCA is fitted on the foreground tokens (``foreground [d, h, w]`` bool; all tokens when
    ``None``); each component is scaled to [0, 1] between its ``quantiles`` over those tokens;
    background tokens are black.
    """
    from sklearn.decomposition import PCA

    p = np.asarray(patch, dtype=np.float32)
    grid = p.shape[:3]
    flat = p.reshape(-1, p.shape[-1])
    fg = np.ones(len(flat), dtype=bool) if foreground is None else np.asarray(foreground, dtype=bool).reshape(-1)
    if fg.sum() < 3:
        fg = np.ones(len(flat), dtype=bool)
    n_comp = min(3, flat.shape[1], int(fg.sum()))
    pca = PCA(n_components=n_comp, random_state=seed).fit(flat[fg])
    comp = pca.transform(flat)
    if n_comp < 3:
        comp = np.concatenate([comp, np.zeros((len(comp), 3 - n_comp))], axis=1)
    lo = np.quantile(comp[fg], quantiles[0], axis=0)
    hi = np.quantile(comp[fg], quantiles[1], axis=0)
    rgb = np.clip((comp - lo) / np.where(hi - lo > 1e-12, hi - lo, 1.0), 0, 1)
    rgb[~fg] = 0.0
    return rgb.reshape(*grid, 3).astype(np.float32)


def _upsample2d(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None]
    out = F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    return np.clip(out, 0, 1)


def _patch_sizes(record: dict[str, Any]) -> tuple[float, float, float]:
    """Voxels per token along (d, h, w): one int for the ViT, three for baselines (e.g. M3D 4x16x16)."""
    ps = record.get("patch_size", 14)
    if isinstance(ps, (list, tuple)):
        return tuple(float(v) for v in ps)  # type: ignore[return-value]
    return (float(ps),) * 3


def _preprocessed_ct(volume_path: str | os.PathLike[str], record: dict[str, Any]) -> np.ndarray | None:
    """The model-input CT in HU ``[D, H, W]``, re-created from the store record; ``None`` for
    backbones with their own preprocessing (other CT foundation models), whose input is not in HU."""
    from voxelfm.io import read_volume
    from voxelfm.preprocess import PRESETS, Preset, preprocess_volume

    preset_d = record.get("preset") or "default"
    if not isinstance(preset_d, dict) and preset_d not in PRESETS:
        return None
    preset = Preset.from_dict(preset_d) if isinstance(preset_d, dict) else preset_d
    budget = record.get("budget") or {}
    pre = preprocess_volume(read_volume(volume_path), preset, crop_background=record.get("crop_box") is not None,
                            max_patches=budget.get("max_patches"), patch_size=int(record.get("patch_size", 14)),
                            normalise=False)
    return pre.array.numpy()


def pca_rgb_figure(store: Any, item_id: str, path: str | os.PathLike[str], *,
                   volume: str | os.PathLike[str] | np.ndarray | None = None, foreground: bool = True,
                   foreground_hu: float = -900.0, window: tuple[float, float] = (-1000.0, 1000.0),
                   slices: Sequence[int] | None = None, title: str | None = None, seed: int = 0) -> Path:
    """Patch-token PCA → RGB next to the preprocessed CT, in three planes (axial, coronal, sagittal).

    Args:
        store: an :class:`~voxelfm.inference.store.EmbeddingStore` (or its folder).
        item_id: the scan to show.
        path: PNG to write.
        volume: the scan's file (re-preprocessed with the store record, ``normalise=False``), or a
            model-input HU array ``[D, H, W]``; ``None`` shows the PCA view only.
        foreground: fit the PCA on foreground tokens only — patches whose mean HU exceeds
            ``foreground_hu`` when the CT is available, else tokens above the median of the first
            principal component (DINOv2's trick).
        window: HU display window of the CT.
        slices: model-input voxel indices ``(d, h, w)`` of the three planes (default: centre).
        title: figure title (default the id).

    Rows: axial (superior view, patient right on the left), coronal and sagittal (superior up).
    Columns: CT, PCA RGB, overlay.
    """
    import torch

    if isinstance(store, (str, os.PathLike)):
        from voxelfm.inference.store import EmbeddingStore

        store = EmbeddingStore(store)
    feats = store.load(item_id)
    patch = feats.patch.numpy()
    grid = patch.shape[:3]
    record = feats.record or {}
    ps = _patch_sizes(record)
    ct = None
    if isinstance(volume, (np.ndarray, torch.Tensor)):
        ct = np.asarray(volume, dtype=np.float32)
    elif volume is not None:
        ct = _preprocessed_ct(volume, record)
    shape = tuple(ct.shape) if ct is not None else tuple(int(round(g * p)) for g, p in zip(grid, ps))
    if ct is not None and tuple(ct.shape) != tuple(int(round(g * p)) for g, p in zip(grid, ps)):
        ps_axes = [s / g for s, g in zip(ct.shape, grid)]
    else:
        ps_axes = list(ps)
    fg = None
    if foreground:
        if ct is not None:
            t = torch.from_numpy(ct)[None, None]
            pooled = torch.nn.functional.adaptive_avg_pool3d(t, grid)[0, 0].numpy()
            fg = pooled > foreground_hu
        else:
            from sklearn.decomposition import PCA

            first = PCA(1, random_state=seed).fit_transform(patch.reshape(-1, patch.shape[-1]))[:, 0]
            fg = (first > np.median(first)).reshape(grid)
    rgb = pca_rgb_tokens(patch, fg, seed=seed)
    centre = [s // 2 for s in shape] if slices is None else [int(v) for v in slices]
    planes = []
    for axis, name in ((0, "axial"), (1, "coronal"), (2, "sagittal")):
        k = min(max(0, centre[axis]), shape[axis] - 1)
        tk = min(int(k / ps_axes[axis]), grid[axis] - 1)
        tok = np.take(rgb, tk, axis=axis)
        img_shape = tuple(s for a, s in enumerate(shape) if a != axis)
        up = _upsample2d(tok, img_shape)
        ct_sl = None if ct is None else np.take(ct, k, axis=axis)
        if axis != 0:  # rows run inferior→superior: show superior at the top
            up = up[::-1]
            ct_sl = None if ct_sl is None else ct_sl[::-1]
        planes.append((name, k, ct_sl, up))
    plt = _plt()
    ncols = 3 if ct is not None else 1
    fig, axes = plt.subplots(3, ncols, figsize=(3.0 * ncols, 8.4), squeeze=False)
    for r, (name, k, ct_sl, up) in enumerate(planes):
        if ct is not None:
            axes[r, 0].imshow(ct_sl, cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest")
            axes[r, 0].set_title(f"{name} {k}: CT", fontsize=8)
            axes[r, 1].imshow(up, interpolation="nearest")
            axes[r, 1].set_title("PCA of patch tokens", fontsize=8)
            axes[r, 2].imshow(ct_sl, cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest")
            axes[r, 2].imshow(up, alpha=0.45, interpolation="nearest")
            axes[r, 2].set_title("overlay", fontsize=8)
        else:
            axes[r, 0].imshow(up, interpolation="nearest")
            axes[r, 0].set_title(f"{name} {k}: PCA of patch tokens", fontsize=8)
        for a in axes[r]:
            a.set_xticks([])
            a.set_yticks([])
    fig.suptitle(title if title is not None else str(item_id), fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
