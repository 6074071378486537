"""``voxelfm phantoms``: generate the synthetic phantom CT cohort."""

from __future__ import annotations

import argparse

HELP = "generate a labelled synthetic chest-CT phantom cohort (volumes, label maps, reports, cohort.csv)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument("-n", "--num", type=int, default=200, metavar="N", help="number of cases (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (same seed → identical files)")
    parser.add_argument("--format", choices=("nifti", "dicom"), default="nifti",
                        help="volume format: NIfTI files or DICOM series (default nifti)")
    parser.add_argument("--size", choices=("demo", "small", "full"), default="demo",
                        help="demo ≈ 112²×80–136 voxels, small 192²×…, full 512²×… (default demo)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="parallel processes (default: CPU count)")


def run(args: argparse.Namespace) -> int:
    import time

    from voxelfm.data.phantoms import FINDINGS, generate_cohort

    t0 = time.perf_counter()
    table = generate_cohort(args.output, args.num, seed=args.seed, format=args.format, size=args.size,
                            workers=args.workers)
    dt = time.perf_counter() - t0
    prev = ", ".join(f"{f} {table[f].mean():.0%}" for f in FINDINGS)
    splits = table["split"].value_counts().to_dict()
    print(f"wrote {len(table)} cases ({table['patient_id'].nunique()} patients) to {args.output} in {dt:.1f} s")
    print(f"splits: {splits}")
    print(f"prevalence: {prev}")
    print(f"manifest: {args.output}/cohort.csv")
    return 0
