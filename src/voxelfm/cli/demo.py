"""``voxelfm demo``: the whole workflow on a synthetic phantom cohort, ending in a report."""

from __future__ import annotations

import argparse

HELP = "run the whole workflow on synthetic phantom CTs (pre-train, extract, probe) and write a report"

EPILOG = """stages: phantoms → prepare → pretrain → extract (pre-trained, random init) → probes
        [→ report generation] → report.md / report.html

examples:
  voxelfm demo                      # ≈ 13 min on 2 CPU cores (≤ 15), writes ./voxelfm-demo/report.md
  voxelfm demo --quick -o /tmp/d    # ≈ 2-3 min version
  voxelfm demo --pretrain-minutes 15 --cases 400 -o big-demo
  voxelfm demo --quick --baselines merlin,ct_clip   # + random-init Merlin and CT-CLIP in a compare table

Re-running with the same -o reuses finished stages and resumes an interrupted one (Ctrl-C is safe);
--fresh starts over. Phantom results exercise the pipeline; they are not clinical evidence."""


def _positive_float(text: str) -> float:
    v = float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("-o", "--output", default="voxelfm-demo", metavar="DIR",
                        help="demo folder (default ./voxelfm-demo)")
    parser.add_argument("--quick", action="store_true",
                        help="≈ 2-3 minute version: 48 scans, 45 s of pre-training, lighter probes")
    parser.add_argument("--cases", type=int, default=None, metavar="N",
                        help="phantom scans to generate (default 400; --quick 48; at least 24)")
    parser.add_argument("--pretrain-minutes", type=_positive_float, default=None, metavar="M",
                        help="pre-training wall-time budget in minutes (default 7; --quick 0.75)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--with-reports", dest="with_reports", action="store_true", default=None,
                       help="also train and evaluate report generation (≈ 12 more minutes; --quick ≈ 1.5)")
    group.add_argument("--no-reports", dest="with_reports", action="store_false",
                       help="skip report generation (the default)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="processes for phantom generation / preparation / reading (default: CPU count)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the cohort, random init and probes (default 0)")
    parser.add_argument("--baselines", nargs="?", const="all", default=None, metavar="FAMILIES",
                        help="also compare random-init versions of the other CT foundation models (merlin, "
                             "m3d_clip, radfm, ct_clip, clip2d; comma-separated, default all) with the ViT in one "
                             "voxelfm compare table: a pipeline check, not a result (needs voxelfm[baselines])")
    parser.add_argument("--fresh", action="store_true", help="delete the folder's earlier demo results first")


def run(args: argparse.Namespace) -> int:
    import logging
    import warnings

    from voxelfm.demo import DemoSettings, run_demo
    from voxelfm.demo.settings import DEMO_BASELINES

    if args.cases is not None and args.cases < 24:
        raise ValueError(f"--cases must be at least 24 (train/val/test splits with both classes), got {args.cases}")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    baselines: tuple[str, ...] = ()
    if args.baselines is not None:
        baselines = tuple(DEMO_BASELINES) if args.baselines == "all" else \
            tuple(b.strip() for b in args.baselines.split(",") if b.strip())
    settings = DemoSettings.create(quick=args.quick, cases=args.cases, pretrain_minutes=args.pretrain_minutes,
                                   with_reports=args.with_reports, workers=args.workers, seed=args.seed,
                                   baselines=baselines)
    run_demo(args.output, fresh=args.fresh, settings=settings)
    return 0
