"""Patient-grouped train/val/test splits and nested data fractions for learning curves.

Two rules hold for every split made here:

* **grouped by patient** — all scans of one patient land in the same split, so no patient is seen
  both in training and in evaluation;
* **seeded** — the same table, seed and options give the same split on every machine.

Where a task has a natural stratum (the label of a binary / multi-class task, the event indicator
of a survival task) the split is stratified at the patient level (the patient's stratum is the
most frequent stratum among their scans). Strata too small to stratify fall back to an unstratified
split with a warning rather than failing.

Data fractions are **nested**: the 10 % training subset is contained in the 25 % subset, which is
contained in the 50 % one, and so on (the reference draws independent, non-nested subsets, which
adds subset noise to learning curves). Subsets are drawn by patient, interleaving strata so every
prefix keeps the class balance as closely as integer counts allow.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["SPLITS", "check_splits", "fold_splits", "make_folds", "make_splits", "nested_fractions"]

SPLITS: tuple[str, str, str] = ("train", "val", "test")
_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
            "dev": "val", "test": "test", "testing": "test"}


def normalise_split_names(split: pd.Series) -> pd.Series:
    """Map common spellings (``valid``, ``validation``, ``Test``...) to ``train|val|test``.

    Raises:
        ValueError: on a value that is none of them.
    """
    s = split.astype(str).str.strip().str.lower()
    bad = sorted(set(s) - set(_ALIASES))
    if bad:
        raise ValueError(f"split column has values {bad[:5]}; use train, val (or valid) and test")
    return s.map(_ALIASES)


def _patient_strata(groups: np.ndarray, strata: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Unique patients (first-seen order) and each patient's modal stratum."""
    patients = pd.unique(groups)
    if strata is None:
        return patients, None
    modal = (pd.DataFrame({"g": groups, "s": strata}).groupby("g", sort=False)["s"]
             .agg(lambda v: v.value_counts().index[0]))
    return patients, modal.loc[patients].to_numpy()


def make_splits(ids: Sequence[str], *, groups: Sequence[str] | None = None,
                stratify: Sequence[object] | None = None,
                fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
                seed: int = 4) -> pd.Series:
    """Assign every id to ``train``, ``val`` or ``test``, grouped by patient.

    Args:
        ids: item ids (one per scan).
        groups: patient id of each item (default: every item its own patient).
        stratify: optional stratum of each item (class label, event indicator); ``None`` = random.
        fractions: (train, val, test) proportions of **patients**; must sum to 1.
        seed: random seed.

    Returns:
        ``pd.Series`` of split names indexed by id.
    """
    from sklearn.model_selection import train_test_split

    ids = [str(i) for i in ids]
    if len(ids) != len(set(ids)):
        raise ValueError("ids must be unique to make splits")
    f = np.asarray(fractions, dtype=float)
    if f.shape != (3,) or np.any(f < 0) or not math.isclose(float(f.sum()), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    g = np.asarray(ids if groups is None else [str(x) for x in groups], dtype=object)
    if len(g) != len(ids):
        raise ValueError("groups must have one entry per id")
    s = None if stratify is None else np.asarray(stratify, dtype=object)
    patients, pstrata = _patient_strata(g, s)
    if len(patients) < 3:
        raise ValueError(f"need at least 3 patients to make train/val/test splits, got {len(patients)}")

    def _split(items: np.ndarray, strata: np.ndarray | None, test_size: float, rs: int):
        if test_size <= 0:
            return items, items[:0]
        n_test = max(1, round(test_size * len(items)))
        if n_test >= len(items):
            return items[:0], items
        if strata is not None:
            counts = pd.Series(strata).value_counts()
            if counts.min() < 2 or len(counts) > min(n_test, len(items) - n_test):
                warnings.warn("a stratum has too few patients to stratify; splitting unstratified",
                              stacklevel=3)
                strata = None
        a, b = train_test_split(items, test_size=n_test, random_state=rs,
                                stratify=None if strata is None else list(strata))
        return np.asarray(a, dtype=object), np.asarray(b, dtype=object)

    idx = np.arange(len(patients))
    rest, test = _split(idx, pstrata, f[2], seed)
    val_share = f[1] / (f[0] + f[1]) if (f[0] + f[1]) > 0 else 0.0
    train, val = _split(rest, None if pstrata is None else pstrata[rest.astype(int)], val_share, seed + 1)
    name = np.empty(len(patients), dtype=object)
    name[train.astype(int)] = "train"
    name[val.astype(int)] = "val"
    name[test.astype(int)] = "test"
    by_patient = dict(zip(patients, name))
    return pd.Series([by_patient[x] for x in g], index=pd.Index(ids, name="id"), name="split")


def make_folds(ids: Sequence[str], n_folds: int, *, groups: Sequence[str] | None = None,
               stratify: Sequence[object] | None = None, seed: int = 4) -> pd.Series:
    """Assign every id to one of ``n_folds`` cross-validation folds, grouped by patient.

    All scans of a patient share a fold; with ``stratify`` (class label, event indicator) folds keep
    the stratum proportions as closely as whole patients allow (scikit-learn's
    ``StratifiedGroupKFold`` over the patients' modal stratum); strata with fewer patients than
    folds fall back to an unstratified assignment with a warning.

    Args:
        ids: item ids (one per scan, unique).
        n_folds: number of folds (≥ 3: the cross-validated protocol takes one fold for testing and
            another for model selection).
        groups: patient id of each item (default: every item its own patient).
        stratify: optional stratum of each item.
        seed: random seed (shuffles patients before the assignment).

    Returns:
        ``pd.Series`` of fold numbers ``0 … n_folds-1`` indexed by id.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    ids = [str(i) for i in ids]
    if len(ids) != len(set(ids)):
        raise ValueError("ids must be unique to make folds")
    k = int(n_folds)
    g = np.asarray(ids if groups is None else [str(x) for x in groups], dtype=object)
    if len(g) != len(ids):
        raise ValueError("groups must have one entry per id")
    patients, pstrata = _patient_strata(g, None if stratify is None else np.asarray(stratify, dtype=object))
    if k < 3:
        raise ValueError(f"cross-validation needs at least 3 folds (test, validation, training), got {n_folds}")
    if len(patients) < k:
        raise ValueError(f"{len(patients)} patients cannot fill {k} folds; use fewer folds or the split protocol")
    if pstrata is not None and pd.Series(pstrata).value_counts().min() < k:
        warnings.warn(f"a stratum has fewer than {k} patients; folds are not stratified", stacklevel=2)
        pstrata = None
    y = np.zeros(len(patients), dtype=int) if pstrata is None else pd.factorize(pd.Series(pstrata))[0]
    fold_of_patient = np.empty(len(patients), dtype=int)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=int(seed) % 2**32)
    # one row per patient: the patient is the group, so every fold holds whole patients
    for i, (_, test) in enumerate(splitter.split(np.zeros(len(patients)), y, groups=np.arange(len(patients)))):
        fold_of_patient[test] = i
    by_patient = dict(zip(patients, fold_of_patient))
    return pd.Series([by_patient[x] for x in g], index=pd.Index(ids, name="id"), name="fold")


def fold_splits(folds: pd.Series, test_fold: int) -> pd.Series:
    """Train / val / test names of one cross-validation round.

    Fold ``test_fold`` is the test split, the next fold (cyclically) the validation split used for
    model selection, and the remaining folds train; over ``n_folds`` rounds every id is tested
    exactly once and validates exactly once.

    Args:
        folds: fold number per id (:func:`make_folds`).
        test_fold: the round (0 … n_folds-1).

    Returns:
        ``pd.Series`` of ``train|val|test`` with the index of ``folds``.
    """
    k = int(folds.max()) + 1
    if not 0 <= int(test_fold) < k:
        raise ValueError(f"test_fold must be in 0..{k - 1}, got {test_fold}")
    val_fold = (int(test_fold) + 1) % k
    names = np.where(folds.to_numpy() == int(test_fold), "test",
                     np.where(folds.to_numpy() == val_fold, "val", "train"))
    return pd.Series(names, index=folds.index, name="split")


def check_splits(splits: pd.Series, groups: pd.Series | None) -> None:
    """Raise if a patient appears in more than one split.

    Args:
        splits: split name per item (any index).
        groups: patient id per item, aligned with ``splits`` (``None`` skips the check).
    """
    if groups is None:
        return
    per_patient = pd.DataFrame({"g": groups.to_numpy(), "s": splits.to_numpy()}).groupby("g")["s"].nunique()
    leaking = per_patient[per_patient > 1]
    if len(leaking):
        raise ValueError(f"{len(leaking)} patient(s) appear in more than one split (e.g. "
                         f"{list(leaking.index[:3])}); fix the split column or drop it to let voxelfm "
                         "make patient-grouped splits")


def nested_fractions(ids: Sequence[str], fractions: Sequence[float], *,
                     groups: Sequence[str] | None = None, stratify: Sequence[object] | None = None,
                     seed: int = 4) -> dict[float, list[str]]:
    """Nested training subsets: ``subset(f1) ⊆ subset(f2)`` whenever ``f1 ≤ f2``.

    Patients are put in one seeded order and every fraction takes a prefix of it (at least one
    patient). With ``stratify`` the order interleaves strata (each patient's key is its rank
    within its stratum divided by the stratum size, plus a random tie-break), so every prefix keeps
    the stratum proportions up to rounding.

    Args:
        ids: training ids.
        fractions: values in (0, 1].
        groups: patient id per id (default: each id its own patient).
        stratify: stratum per id (optional).
        seed: random seed.

    Returns:
        ``{fraction: [ids in the subset, in the order of ids]}``.
    """
    ids = [str(i) for i in ids]
    for fr in fractions:
        if not 0 < float(fr) <= 1:
            raise ValueError(f"data fractions must be in (0, 1], got {fr}")
    g = np.asarray(ids if groups is None else [str(x) for x in groups], dtype=object)
    s = None if stratify is None else np.asarray(stratify, dtype=object)
    patients, pstrata = _patient_strata(g, s)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(patients))
    if pstrata is None:
        order = perm
    else:
        key = np.empty(len(patients))
        strata_perm = pstrata[perm]
        for value in pd.unique(strata_perm):
            members = np.flatnonzero(strata_perm == value)
            key[perm[members]] = (np.arange(len(members)) + rng.random(len(members))) / len(members)
        order = np.argsort(key, kind="stable")
    ranked = patients[order]
    out: dict[float, list[str]] = {}
    for fr in fractions:
        n = max(1, math.ceil(float(fr) * len(patients) - 1e-9))
        keep = set(ranked[:n])
        out[float(fr)] = [i for i, gg in zip(ids, g) if gg in keep]
    return out


def fraction_table(fractions: Mapping[float, Sequence[str]]) -> pd.DataFrame:
    """One row per (fraction, id) — handy to save next to results."""
    rows = [(f, i) for f, members in fractions.items() for i in members]
    return pd.DataFrame(rows, columns=["fraction", "id"])
