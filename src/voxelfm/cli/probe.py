"""``voxelfm probe``: train probes on cached embeddings (one probe, or a whole suite)."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

HELP = "train probes on cached embeddings: one probe (train) or a suite of tasks x backbones (run)"

_TASKS = ("binary", "multilabel", "multiclass", "regression", "survival", "localisation", "segmentation",
          "retrieval")
_HEADS = ("linear", "logistic", "ridge", "mlp", "attentive", "knn", "cox", "localisation", "segmentation",
          "cosine")
_FEATURES = ("cls", "patch", "mean_patch", "registers", "cls+mean_patch")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="probe_command", metavar="{train,run}")
    t = sub.add_parser("train", help="train and evaluate one probe",
                       description="Train one probe on an embedding store and a label table; writes "
                                   "predictions.csv, results.json, history.jsonl, config.json, weights.")
    t.add_argument("--store", required=True, help="embedding store folder (voxelfm extract -o ...)")
    t.add_argument("--labels", required=True, help="label table (CSV/TSV/Parquet) with an id column")
    t.add_argument("--target", required=True, nargs="+",
                   help="label column(s): one for binary/multiclass/regression/segmentation; several for "
                        "multilabel/retrieval; TIME EVENT for survival; Z Y X for localisation")
    t.add_argument("--task", required=True, help=f"one of {', '.join(_TASKS)}")
    t.add_argument("--head", default=None, help=f"one of {', '.join(_HEADS)} (default: the task's usual head)")
    t.add_argument("--feature", default=None, help=f"one of {', '.join(_FEATURES)} (default: cls, or patch "
                                                   "for token heads)")
    t.add_argument("-o", "--output", required=True, help="output folder")
    t.add_argument("--id-col", default="id")
    t.add_argument("--split-col", default="split", help="split column (train/val/test); made by patient "
                                                         "if absent")
    t.add_argument("--seed", type=int, default=4)
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--fraction", type=float, default=None, help="train on this nested fraction of the training split")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other option, e.g. --set hidden_dim=256 --set noise_p=0.5 (see docs/probes.md)")
    r = sub.add_parser("run", help="run a probe suite YAML",
                       description="Run tasks x backbones x heads x data fractions from a suite YAML; writes "
                                   "results.md/.csv/.tex with CIs and pairwise p-values, and figures.")
    r.add_argument("suite", help="suite YAML, or the name of a packaged one (phantom, paper_ctrate); "
                                 "see docs/probes.md")
    r.add_argument("-o", "--output", required=True, help="output folder")
    r.add_argument("--store", action="append", default=[], metavar="NAME=FOLDER",
                   help="set or override a backbone's store (repeatable)")
    r.add_argument("--labels", default=None, help="override the suite's default label table")
    r.add_argument("--no-resume", action="store_true", help="re-run finished runs")
    r.add_argument("--no-figures", action="store_true")
    r.add_argument("--workers", type=int, default=1,
                   help="probe runs trained at the same time, one process each (default 1; use the number "
                        "of free cores — each run is single-threaded)")


def run(args: argparse.Namespace) -> int:
    from voxelfm.errors import ConfigError

    cmd = getattr(args, "probe_command", None)
    if cmd is None:
        raise ConfigError("choose a subcommand: voxelfm probe train ... or voxelfm probe run SUITE.yaml -o DIR")
    if cmd == "train":
        from voxelfm.probes import train_probe

        from voxelfm.cli._options import parse_set_options

        hp = parse_set_options(args.set)
        for key in ("epochs", "lr", "batch_size", "fraction"):
            if getattr(args, key) is not None:
                hp[key] = getattr(args, key)
        target = args.target[0] if len(args.target) == 1 else args.target
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            probe = train_probe(args.store, args.labels, target, task=args.task, head=args.head,
                                feature=args.feature, id_col=args.id_col, split_col=args.split_col,
                                seed=args.seed, output_dir=args.output, **hp)
        for message in dict.fromkeys(str(w.message).splitlines()[0] for w in caught
                                     if issubclass(w.category, UserWarning)):
            print(f"warning: {message}", file=sys.stderr)  # one line each, no source location
        print(probe.summary())
        if probe.best_epoch is not None:
            print(f"  best epoch: {probe.best_epoch}")
        print(f"  written to {Path(args.output)}")
        return 0
    from voxelfm.probes import run_suite

    stores = None
    if args.store:
        stores = {}
        for item in args.store:
            name, sep, folder = item.partition("=")
            if not sep:
                raise ConfigError(f"--store expects NAME=FOLDER, got {item!r}")
            stores[name.strip()] = folder.strip()
        import yaml

        from voxelfm.probes.suite import packaged_suite_path

        suite_path = Path(args.suite)
        if not suite_path.exists() and packaged_suite_path(args.suite) is not None:
            suite_path = packaged_suite_path(args.suite)
        if not suite_path.exists():
            raise FileNotFoundError(f"suite file {suite_path} does not exist")
        data = yaml.safe_load(suite_path.read_text()) or {}
        merged = dict(data.get("stores") or {})
        base_dir = suite_path.resolve().parent
        merged = {k: (v if Path(v).is_absolute() else str(base_dir / v)) for k, v in merged.items()}
        merged.update(stores)
        stores = merged
    res = run_suite(args.suite, args.output, stores=stores, labels=args.labels, resume=not args.no_resume,
                    figures=not args.no_figures, workers=args.workers)
    print(res.paths["markdown"].read_text())
    if res.failures:
        print(f"{len(res.failures)} run(s) failed (see error.txt in their folders):")
        for key, err in res.failures:
            print(f"  {' / '.join(map(str, key))}: {err}")
    print(f"results in {Path(args.output)}")
    return 1 if res.failures else 0
