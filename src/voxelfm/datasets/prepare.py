"""``prepare_dataset``: run a recipe and publish its prepared folder atomically.

The prepared folder (the contract every recipe fulfils; docs/datasets.md):

==================  ===========================================================================
``manifest.csv``    ``id,path[,series_uid]`` + optional reading overrides ``override_spacing_z,
                    override_spacing_y, override_spacing_x, override_rescale_slope,
                    override_rescale_intercept, override_orientation`` (:mod:`voxelfm.io.overrides`);
                    ``voxelfm extract -i manifest.csv`` reads it as is.
``labels.csv``      ``id, patient_id, split`` + the targets, in the probe format
                    (:func:`voxelfm.probes.data.read_label_table`).
``splits.csv``      ``id, patient_id, split`` (train / val / test; patient-grouped).
``suite.yaml``      the paper's protocol for the dataset: ``voxelfm probe run suite.yaml -o RESULTS
                    --store NAME=STORE``.
``prepare.json``    recipe name and version, options, what was found / missing / skipped and
                    why, counts.
==================  ===========================================================================

plus what a recipe adds (label maps + ``classes.json``, ``reports.csv``, ``nodules.csv``...). The
folder is built in a temporary sibling and renamed into place only when complete and valid, so
an interrupted or failing run never leaves a half-finished output.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from voxelfm.datasets.recipe import Prepared, PrepareReport, Recipe
from voxelfm.errors import VoxelFMError

__all__ = ["OUTPUT_FILES", "PreparedFolderExistsError", "PrepareResult", "prepare_dataset"]

#: files every prepared folder holds.
OUTPUT_FILES: tuple[str, ...] = ("manifest.csv", "labels.csv", "splits.csv", "suite.yaml", "prepare.json")

_SUITE_HEADER = """\
# {title}: the paper's probe protocol, written by `voxelfm datasets prepare {name}` (recipe v{version}).
# Run it on the embeddings of manifest.csv:
#   voxelfm extract -i {out}/manifest.csv -o stores/NAME --weights W --preset paper --max-patches 25000
#   voxelfm probe run {out}/suite.yaml -o results/{name} --store NAME=stores/NAME
"""


class PreparedFolderExistsError(VoxelFMError, FileExistsError):
    """The output folder exists and ``overwrite`` was not given."""


class PrepareResult:
    """Outcome of :func:`prepare_dataset`: the folder and its ``prepare.json`` content."""

    def __init__(self, out: Path, info: dict[str, Any]) -> None:
        self.out = out
        self.info = info

    @property
    def n_scans(self) -> int:
        return int(self.info["counts"]["scans"])

    def summary(self) -> str:
        c = self.info["counts"]
        splits = ", ".join(f"{k} {v}" for k, v in c["splits"].items())
        text = (f"{self.info['recipe']}: {c['scans']} scans of {c['patients']} patients ({splits}) -> {self.out}")
        if self.info["skipped_counts"]:
            text += "; skipped: " + "; ".join(f"{n} {r}" for r, n in self.info["skipped_counts"].items())
        if self.info["missing"]:
            text += f"; {len(self.info['missing'])} expected file(s) missing (see prepare.json)"
        return text


def _check(recipe: Recipe, prepared: Prepared, out: Path) -> list[str]:
    """Validate the tables against the contract; returns warnings, raises on violations."""
    from voxelfm.probes.splits import SPLITS, check_splits, normalise_split_names

    m, lab = prepared.manifest, prepared.labels
    for col in ("id", "path"):
        if col not in m.columns:
            raise VoxelFMError(f"recipe {recipe.name}: manifest has no {col!r} column")
    for col in ("id", "patient_id", "split"):
        if col not in lab.columns:
            raise VoxelFMError(f"recipe {recipe.name}: labels have no {col!r} column")
    if m["id"].duplicated().any():
        raise VoxelFMError(f"recipe {recipe.name}: duplicate ids in the manifest, e.g. "
                           f"{list(m['id'][m['id'].duplicated()].iloc[:3])}")
    if set(m["id"]) != set(lab["id"]):
        raise VoxelFMError(f"recipe {recipe.name}: manifest and labels list different ids")
    lab["split"] = normalise_split_names(lab["split"])
    check_splits(lab["split"], lab["patient_id"].astype(str))
    warnings = [f"the {s} split is empty" for s in SPLITS if not (lab["split"] == s).any()]
    for p in m["path"]:
        q = Path(p) if Path(p).is_absolute() else out / p
        if not q.exists():
            raise VoxelFMError(f"recipe {recipe.name}: manifest path {q} does not exist")
    return warnings


def _write_suite(recipe: Recipe, prepared: Prepared, tmp: Path, out: Path) -> None:
    import yaml

    suite = {"name": recipe.name, **prepared.suite, "labels": "labels.csv"}
    suite.setdefault("seed", 4)
    text = _SUITE_HEADER.format(title=recipe.title, name=recipe.name, version=recipe.version, out=out)
    (tmp / "suite.yaml").write_text(text + yaml.safe_dump(suite, sort_keys=False, width=110), encoding="utf-8")


def _validate_suite(tmp: Path) -> None:
    """The suite must load as ``voxelfm probe run`` would (tasks, heads, options, label columns)."""
    from voxelfm.probes.suite import load_suite

    with tempfile.TemporaryDirectory() as store:
        load_suite(tmp / "suite.yaml", stores={"check": store})


def _counts(prepared: Prepared) -> dict[str, Any]:
    lab = prepared.labels
    return {"scans": int(len(lab)), "patients": int(lab["patient_id"].nunique()),
            "splits": {s: int((lab["split"] == s).sum()) for s in ("train", "val", "test")},
            **prepared.counts}


def _publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished ``tmp`` to ``out`` (replacing an old ``out`` only when it is complete)."""
    if not out.exists():
        os.replace(tmp, out)
        return
    if not overwrite:
        raise PreparedFolderExistsError(f"{out} exists; choose another -o folder or pass --overwrite")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)  # put the previous folder back
        raise
    shutil.rmtree(old, ignore_errors=True)


def prepare_dataset(name: str | Recipe, root: str | os.PathLike[str], out: str | os.PathLike[str], *,
                    seed: int = 4, overwrite: bool = False, **options: Any) -> PrepareResult:
    """Turn the official download of a dataset into a prepared folder (module docstring).

    Args:
        name: recipe name (``voxelfm datasets list``) or a :class:`Recipe`.
        root: the download folder, laid out as the recipe's :attr:`~Recipe.layout` says.
        out: the prepared folder to create.
        seed: seed of splits the recipe has to make (datasets without official splits).
        overwrite: replace an existing ``out`` (only once the new one is complete).
        options: recipe options (:attr:`Recipe.options`).

    Returns:
        :class:`PrepareResult`.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        PreparedFolderExistsError: ``out`` exists and ``overwrite`` is False (a FileExistsError).
        VoxelFMError: nothing complete was found (the message lists what is missing), or the recipe
            produced tables that break the contract.
    """
    from voxelfm import __version__
    from voxelfm.datasets.registry import get_recipe

    recipe = name if isinstance(name, Recipe) else get_recipe(name)
    root_p = Path(os.path.expanduser(str(root))).resolve()
    out_p = Path(os.path.expanduser(str(out))).resolve()
    if not root_p.is_dir():
        raise FileNotFoundError(f"download folder {root_p} does not exist (see `voxelfm datasets info {recipe.name}` "
                                "for the layout expected)")
    if out_p.exists() and not overwrite:
        raise PreparedFolderExistsError(f"{out_p} exists; choose another -o folder or pass --overwrite")
    if out_p == root_p or root_p in out_p.parents:
        raise ValueError(f"write the prepared folder outside the download folder {root_p}")
    opts = recipe.resolve_options(options)
    out_p.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_p.name}.tmp-", dir=out_p.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the published folder is not
    try:
        report = PrepareReport()
        prepared = recipe.build(root_p, tmp, report, seed=int(seed), **opts)
        if prepared.manifest.empty:
            files = sorted(report.missing, key=lambda m: m.endswith("/"))  # files before whole folders
            missing = "; ".join(files[:12]) + (f"; and {len(files) - 12} more" if len(files) > 12 else "") \
                if files else "no complete scan"
            skipped = "; ".join(f"{n} {r}" for r, n in report.skipped_counts().items())
            raise VoxelFMError(f"{recipe.name}: nothing to prepare in {root_p} (missing: {missing}"
                               f"{'; skipped: ' + skipped if skipped else ''}); see `voxelfm datasets info "
                               f"{recipe.name}` for the layout expected")
        warnings = _check(recipe, prepared, tmp)
        prepared.manifest.to_csv(tmp / "manifest.csv", index=False, lineterminator="\n")
        prepared.labels.to_csv(tmp / "labels.csv", index=False, lineterminator="\n")
        prepared.labels[["id", "patient_id", "split"]].to_csv(tmp / "splits.csv", index=False, lineterminator="\n")
        _write_suite(recipe, prepared, tmp, out_p)
        _validate_suite(tmp)
        info = {
            "recipe": recipe.name, "recipe_version": recipe.version, "voxelfm_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "root": str(root_p), "seed": int(seed), "options": opts,
            "complete": not report.missing and not report.skipped,
            "counts": _counts(prepared), "found": report.found, "missing": report.missing,
            "skipped_counts": report.skipped_counts(), "skipped": report.skipped,
            "notes": report.notes, "warnings": warnings,
        }
        (tmp / "prepare.json").write_text(json.dumps(info, indent=1, default=str) + "\n", encoding="utf-8")
        _publish(tmp, out_p, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PrepareResult(out_p, info)
