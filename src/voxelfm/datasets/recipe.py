"""What a dataset recipe is: its description, and ``build`` from the official download layout to
the tables of a prepared folder (see :func:`voxelfm.datasets.prepare_dataset` for the contract)."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

__all__ = ["Prepared", "PrepareReport", "Recipe", "RecipeOption"]


@dataclass
class PrepareReport:
    """What a recipe found in the download and what it left out (written to ``prepare.json``).

    Attributes:
        found: counts of what was found, by kind (``{"volumes": 120, "metadata rows": 118}``).
        missing: expected files or folders that are absent (relative to the download root).
        skipped: ``{"id", "reason"}`` of every scan found but not prepared.
        notes: anything else the user should know (assumptions made, files ignored).
    """

    found: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def skip(self, item_id: str, reason: str) -> None:
        self.skipped.append({"id": str(item_id), "reason": reason})

    def skipped_counts(self) -> dict[str, int]:
        """Number of skipped scans per reason."""
        out: dict[str, int] = {}
        for s in self.skipped:
            out[s["reason"]] = out.get(s["reason"], 0) + 1
        return out


@dataclass
class Prepared:
    """The tables a recipe builds (the framework validates and writes them).

    Attributes:
        manifest: ``id, path[, series_uid][, override_*]`` — one row per scan; paths absolute (into
            the download) or relative to the prepared folder (files the recipe wrote there).
        labels: ``id, patient_id, split`` + targets, one row per manifest id, in the probe format.
        suite: the suite mapping (``voxelfm probe run``), without ``labels`` (set to labels.csv).
        counts: extra counts for ``prepare.json`` (positives per label, classes...).
    """

    manifest: pd.DataFrame
    labels: pd.DataFrame
    suite: dict[str, Any]
    counts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RecipeOption:
    """A recipe option settable with ``voxelfm datasets prepare NAME --set key=value``."""

    default: Any
    help: str
    choices: tuple[Any, ...] | None = None


class Recipe(abc.ABC):
    """One public dataset: where it comes from and how its download becomes a prepared folder.

    Subclasses set the class attributes and implement :meth:`build`; they are listed in
    :mod:`voxelfm.datasets.registry`.
    """

    #: registry name (``voxelfm datasets prepare NAME``), lower case with dashes.
    name: ClassVar[str] = ""
    #: human-readable name.
    title: ClassVar[str] = ""
    #: one line: what the dataset is and which task(s) the recipe prepares.
    description: ClassVar[str] = ""
    #: licence / terms of use, as published.
    licence: ClassVar[str] = ""
    #: where to download it.
    url: ClassVar[str] = ""
    #: the official download layout the recipe expects (folder tree, file names, CSV columns).
    layout: ClassVar[str] = ""
    #: the paper's protocol and result for this dataset, for comparison.
    paper: ClassVar[str] = ""
    #: bumped whenever the prepared output of the same download changes.
    version: ClassVar[str] = "1"
    #: options of :meth:`build` (name → :class:`RecipeOption`).
    options: ClassVar[dict[str, RecipeOption]] = {}

    @abc.abstractmethod
    def build(self, root: Path, out: Path, report: PrepareReport, *, seed: int,
              **options: Any) -> Prepared:
        """Read the download at ``root`` and return the prepared tables.

        Args:
            root: the download folder (as documented in :attr:`layout`).
            out: the (temporary) prepared folder; files the tables refer to (label maps, reports)
                are written here and referred to by paths relative to it.
            report: record found / missing / skipped here; scans that are incomplete are skipped,
                not fatal.
            seed: seed of any split the recipe has to make.
            options: values of :attr:`options` (already validated).
        """

    def resolve_options(self, given: dict[str, Any]) -> dict[str, Any]:
        """Defaults updated with ``given``; unknown names or values outside ``choices`` raise ValueError."""
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            valid = ", ".join(self.options) or "none"
            raise ValueError(f"{self.name}: unknown option(s) {', '.join(unknown)}; valid: {valid}")
        out = {k: o.default for k, o in self.options.items()}
        for k, v in given.items():
            opt = self.options[k]
            if opt.choices is not None and v not in opt.choices:
                valid = ", ".join(map(str, opt.choices))
                raise ValueError(f"{self.name}: option {k} must be one of {valid}, got {v!r}")
            out[k] = v
        return out
