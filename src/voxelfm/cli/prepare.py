"""``voxelfm prepare``: resample CT volumes once into a memory-mappable store for pre-training."""

from __future__ import annotations

import argparse

HELP = "prepare CT volumes (DICOM/NIfTI/NRRD/manifest) as isotropic int16 arrays for pre-training"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input", nargs="+", required=True, metavar="INPUT",
                        help="CT files, DICOM folders, zips or CSV manifests with id,path columns")
    parser.add_argument("-o", "--output", required=True, metavar="STORE", help="store folder (resumed if it exists)")
    parser.add_argument("--preset", choices=("default", "paper"), default="default",
                        help="HU window / orientation / isotropic spacing rule (default: default)")
    parser.add_argument("--crop-background", action="store_true", help="crop each volume to the body box first")
    parser.add_argument("--workers", type=int, default=None, metavar="N", help="processes (default: CPU count)")
    parser.add_argument("--min-side", type=int, default=56, metavar="VOXELS",
                        help="skip volumes with a prepared side below this (default 56, the reference local "
                             "crop; lower it for small CPU crop sizes)")
    parser.add_argument("--retry-failed", action="store_true", help="retry inputs that failed in an earlier run")


def run(args: argparse.Namespace) -> int:
    from voxelfm.data.volume_store import VolumeStore, prepare_volumes

    summary = prepare_volumes(args.input, args.output, preset=args.preset, crop_background=args.crop_background,
                              workers=args.workers, min_side=args.min_side, retry_failed=args.retry_failed)
    store = VolumeStore(args.output)
    print(f"{args.output}: {summary}; the store holds {len(store)} volumes (index: {args.output}/index.csv)")
    problems = [r for r in store.records() if r.get("status") in ("failed", "skipped")]
    for r in problems[:10]:
        print(f"  {r['status']}: {r['id']}: {r.get('error', '')}")
    if len(problems) > 10:
        print(f"  ... and {len(problems) - 10} more (see index.csv)")
    return 0 if len(store) > 0 or not problems else 1
