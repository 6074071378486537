"""``voxelfm compare``: several backbones on one cohort — extract, probe, one table with paired tests."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HELP = "compare backbones on your data: extract with each, run one probe suite, table with CIs and paired tests"

EPILOG = """examples:
  voxelfm compare --backbones voxelfm=teacher/,merlin=merlin.pt,ct_clip=ct_clip.pt \\
      --inputs cohort.csv --labels labels.csv -o compare/
  voxelfm compare --backbones voxelfm=vit_base,voxelfm@random --inputs scans/ --labels labels.csv \\
      --suite suite.yaml -o compare/
  voxelfm compare --backbones clip2d@biomedclip=microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224,voxelfm=W \\
      --option biomedclip:window=lung --inputs cohort.csv --labels labels.csv -o compare/
  torchrun --nproc_per_node=4 -m voxelfm compare --backbones ... -o compare/   # sharded extraction

A backbone is FAMILY[@LABEL][=WEIGHTS]: a family of the registry, an optional label (column and store
name; needed when one family appears twice) and its weights (file, folder or Hugging Face repo id in the
local hub cache). Without weights a backbone is randomly initialised: a pipeline check, not a result.
Without --suite the tasks come from the label table's columns (0/1 -> binary, classes -> multiclass,
numbers -> regression, time + event -> survival). Every pair of backbones is tested on the same test
ids (DeLong for AUROC, paired bootstrap otherwise) with Holm's adjustment.
Re-running with the same -o resumes: finished embeddings and probe runs are kept.
Output: OUT/table.md, table.csv, table.tex; OUT/figures/, OUT/probes/figures/; OUT/stores/<label>/."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("--backbones", "-b", required=True, action="append", metavar="SPECS",
                        help="comma-separated FAMILY[@LABEL][=WEIGHTS] (repeatable)")
    parser.add_argument("--option", action="append", default=[], metavar="LABEL:KEY=VALUE",
                        help="a family option of one backbone, e.g. voxelfm:config=config.yaml (repeatable)")
    parser.add_argument("--inputs", "-i", required=True, nargs="+", metavar="INPUT",
                        help="volumes: files, folders or CSV manifests (id,path), as voxelfm extract -i")
    parser.add_argument("--labels", required=True, help="label table (CSV/TSV/Parquet) with an id column")
    parser.add_argument("--suite", default=None,
                        help="probe suite YAML or packaged name (default: tasks derived from the label columns)")
    parser.add_argument("--targets", nargs="+", default=None, metavar="COL",
                        help="label columns of the derived suite (default: every usable column)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="comparison folder")
    parser.add_argument("--id-col", default="id")
    parser.add_argument("--holm", default=None, choices=("table", "task", "none"),
                        help="Holm family: the whole table (default), each task, or no adjustment")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of the table's letters")
    parser.add_argument("--n-resamples", type=int, default=None, help="bootstrap resamples (default 1000)")
    g = parser.add_argument_group("extraction (as voxelfm extract; preset/crop/max-patches apply to voxelfm "
                                  "backbones, the baselines preprocess as their authors did)")
    g.add_argument("--preset", default="default", choices=("default", "paper"))
    g.add_argument("--crop-background", action="store_true")
    g.add_argument("--max-patches", type=int, default=None, metavar="N")
    g.add_argument("--mode", default="auto", choices=("auto", "full", "chunked"))
    g.add_argument("--device", default=None)
    g.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    g.add_argument("--workers", type=int, default=2, metavar="N",
                   help="background processes reading + preprocessing volumes (default 2)")
    g.add_argument("--spacing", nargs=3, type=float, metavar=("SZ", "SY", "SX"), default=None,
                   help="voxel spacing in mm for .npy/.npz inputs")
    p = parser.add_argument_group("probes")
    p.add_argument("--probe-workers", type=int, default=1, metavar="N",
                   help="probe runs trained at the same time, one process each (default 1)")
    p.add_argument("--no-resume", action="store_true", help="re-train finished probe runs")
    p.add_argument("--no-figures", action="store_true")


def run(args: argparse.Namespace) -> int:
    if args.max_patches is not None and args.max_patches < 1:
        raise ValueError(f"--max-patches must be >= 1, got {args.max_patches}")
    if args.workers < 0 or args.probe_workers < 1:
        raise ValueError("--workers must be >= 0 and --probe-workers >= 1")
    from voxelfm.inference.backbones import parse_backbones

    specs = parse_backbones(args.backbones, args.option)  # usage errors before anything heavy is imported
    import torch

    from voxelfm.probes.compare import compare_backbones

    if "OMP_NUM_THREADS" not in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["WORLD_SIZE"])))
    extract = {"preset": args.preset, "crop_background": args.crop_background, "max_patches": args.max_patches,
               "mode": args.mode, "device": args.device, "dtype": args.dtype, "workers": args.workers,
               "spacing": args.spacing}
    res = compare_backbones(specs, args.inputs, args.labels, args.output, suite=args.suite, id_col=args.id_col,
                            targets=args.targets, holm=args.holm, alpha=args.alpha, n_resamples=args.n_resamples,
                            extract=extract, probe_workers=args.probe_workers, resume=not args.no_resume,
                            figures=not args.no_figures)
    if res is None:  # a torchrun rank other than 0: it only extracted
        return 0
    random = [s.label for s in specs if s.weights is None]
    if random:
        print(f"note: {', '.join(random)} {'is' if len(random) == 1 else 'are'} randomly initialised: "
              "a pipeline check, not a result", file=sys.stderr)
    print(res.paths["markdown"].read_text())
    failed = {k: v for k, v in res.extraction.items() if not v.all_ok}
    for label, summ in failed.items():
        print(f"{label}: {summ.failed + summ.failed_before} volume(s) without embeddings "
              f"(see {Path(args.output) / 'stores' / label / 'index.csv'})", file=sys.stderr)
    if res.suite.failures:
        print(f"{len(res.suite.failures)} probe run(s) failed (see error.txt in their folders):", file=sys.stderr)
        for key, err in res.suite.failures:
            print(f"  {' / '.join(map(str, key))}: {err}", file=sys.stderr)
    print(f"results in {Path(args.output)} (table.md, table.csv, table.tex, figures/)")
    return 1 if (failed or res.suite.failures) else 0
