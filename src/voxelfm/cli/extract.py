"""``voxelfm extract``: embed CT volumes (files, DICOM folders, CSV manifests) into an embedding store."""

from __future__ import annotations

import argparse
import os
import sys

HELP = "extract CLS / patch / register embeddings of CT volumes into an embedding store"

EPILOG = """examples:
  voxelfm extract -i scans/ -o emb/ --weights 99999.pth --config config.yaml --preset paper \\
      --crop-background --max-patches 25000
  voxelfm extract -i cohort.csv -o emb/ --weights vit_base --workers 4 --dtype bf16
  voxelfm extract -i cohort.csv -o emb/ --weights vit_base --dtype bf16 --dry-run   # how long?
  torchrun --nproc_per_node=4 -m voxelfm extract -i cohort.csv -o emb/ --weights model/
  voxelfm extract -i scans/ -o emb_merlin/ --backbone merlin --weights stanfordmimi/Merlin
  voxelfm extract -i lesions.csv -o emb_fmcib/ --backbone fmcib --weights model_weights.torch
      (lesions.csv: id,path,coordX,coordY,coordZ with LPS mm seed points, one row per lesion)

Re-running with the same -o skips finished ids (--retry-failed re-tries failures).
Exit status: 0 all ok, 1 some items failed now or in an earlier run (see OUT/index.csv),
2 usage error. Under torchrun item failures exit 0 (torchrun would report the job as crashed);
the summary line and OUT/index.csv list them."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("-i", "--input", nargs="+", required=True, metavar="INPUT",
                        help="volume files, folders (every DICOM series found is one item) or CSV manifests (id,path)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="embedding store folder")
    parser.add_argument("--backbone", default="voxelfm", metavar="NAME",
                        help="backbone family: voxelfm (default), merlin, ctfm, fmcib, m3d_clip, radfm, ct_clip, "
                             "clip2d (see docs/baselines.md)")
    parser.add_argument("--weights", default=None, metavar="W",
                        help="weights file or folder, or a config name (vit_tiny, vit_small, vit_base) for random init; "
                             "for other backbones their released file, a folder holding it or a Hugging Face repo id "
                             "in the local cache (omitted: seeded random init, a pipeline check)")
    parser.add_argument("--backbone-option", action="append", default=[], metavar="KEY=VALUE", dest="backbone_options",
                        help="backbone option (repeatable), e.g. input_size=96x96x64 for merlin")
    parser.add_argument("--config", default=None, metavar="CONFIG",
                        help="architecture + normalisation: reference config.yaml or voxelfm config.json")
    parser.add_argument("--preset", default="default", choices=("default", "paper"),
                        help="preprocessing preset (default: one HU window, canonical orientation; "
                             "paper: the reference pipeline exactly)")
    parser.add_argument("--crop-background", action="store_true", help="crop to the body before resampling")
    parser.add_argument("--max-patches", type=int, default=None, metavar="N",
                        help="token budget per volume (the paper used 25000)")
    parser.add_argument("--mode", default="auto", choices=("auto", "full", "chunked"),
                        help="one forward pass, overlapping windows, or auto by memory budget")
    parser.add_argument("--window", default=None, metavar="W",
                        help="chunk size: tokens per side (16, 16x16x8) or voxels (224vox)")
    parser.add_argument("--overlap", type=float, default=0.25, help="window overlap fraction (default 0.25)")
    parser.add_argument("--memory-budget-gb", type=float, default=None, metavar="GB",
                        help="activation memory budget for auto mode (default: env VOXELFM_MEMORY_BUDGET_GB, "
                             "60%% of free GPU memory, or 4 GiB on CPU)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"), help="autocast dtype")
    parser.add_argument("--workers", type=int, default=2, metavar="N",
                        help="background processes reading + preprocessing (0 = none; default 2)")
    parser.add_argument("--format", default="safetensors", choices=("safetensors", "pth", "both"),
                        help="safetensors store files, reference .pth {cls, patch} files, or both")
    parser.add_argument("--retry-failed", action="store_true", help="re-try ids whose last attempt failed")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads (default: env VOXELFM_THREADS or OMP_NUM_THREADS, else the "
                             "cores not busy by the 1-minute load average; the choice is printed)")
    parser.add_argument("--dry-run", action="store_true",
                        help="read a few volumes, time the model briefly and print the expected wall time "
                             "of the whole input; writes nothing")
    parser.add_argument("--spacing", nargs=3, type=float, metavar=("SZ", "SY", "SX"), default=None,
                        help="voxel spacing in mm for .npy/.npz inputs (default: an .npz 'spacing' entry, "
                             "else 1 mm with a warning); other formats store their own")


def parse_options(pairs: list[str]) -> dict[str, object]:
    """``["input_size=96x96x64", "window=lung"]`` → options; numbers become int/float, ``AxBxC``
    a tuple of ints, ``true``/``false`` booleans, anything else stays text."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--backbone-option needs KEY=VALUE, got {pair!r}")
        v = value.strip()
        parsed: object = v
        if v.lower() in ("true", "false"):
            parsed = v.lower() == "true"
        elif all(part.strip().lstrip("-").isdigit() for part in v.lower().split("x")) and "x" in v.lower():
            parsed = tuple(int(part) for part in v.lower().split("x"))
        else:
            for cast in (int, float):
                try:
                    parsed = cast(v)
                    break
                except ValueError:
                    continue
        out[key.strip()] = parsed
    return out


def run(args: argparse.Namespace) -> int:
    # Reader warnings (oblique image, assumed spacing, several series...) print as one line each
    # (voxelfm.cli.main), also in the reading workers; the full text is in each embedding's record.
    if args.max_patches is not None and args.max_patches < 1:
        raise ValueError(f"--max-patches must be >= 1, got {args.max_patches}")
    if not 0 <= args.overlap < 1:
        raise ValueError(f"--overlap must be in [0, 1), got {args.overlap}")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    from voxelfm.io import collect_inputs

    items = collect_inputs(args.input)  # fail fast on bad paths, before loading the model
    if not items:
        raise ValueError(f"no volumes found in {' '.join(args.input)}")

    import torch

    from voxelfm.inference.batch import extract_batch
    from voxelfm.models import load_backbone
    from voxelfm.utils.threads import choose_threads

    world = int(os.environ.get("WORLD_SIZE", "1"))
    choice = choose_threads(args.threads)
    threads = choice.threads
    if world > 1 and choice.source == "free cores":  # ranks on one machine share its cores
        threads = max(1, threads // world)
    torch.set_num_threads(threads)
    if int(os.environ.get("RANK", "0")) == 0:
        per_rank = f" ({threads} per rank of {world})" if threads != choice.threads else ""
        print(f"voxelfm extract: {choice.describe()}{per_rank}", file=sys.stderr, flush=True)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if args.dtype in ("bf16", "fp32") and device.startswith("cpu"):
            from voxelfm.models.kernels import kernels_summary

            names = (f"{args.dtype}_attention", "rope")
            print(f"voxelfm extract: {args.dtype} CPU kernels (built once per machine, ~5–8 s each): ", end="",
                  file=sys.stderr, flush=True)
            print(", ".join(f"{name} {status}" for name, status in kernels_summary(names).items()), file=sys.stderr,
                  flush=True)
    backbone = args.backbone.strip().lower()
    if backbone == "voxelfm":
        if args.weights is None:
            raise ValueError("--weights is required for the voxelfm backbone (a weights file, folder or config "
                             "name such as vit_base)")
        if args.backbone_options:
            raise ValueError("--backbone-option is for the other backbones; voxelfm takes --config")
        model = load_backbone(args.weights, config=args.config, device="cpu")
    else:
        from voxelfm.baselines import family_names

        if backbone not in family_names():
            raise ValueError(f"unknown --backbone {args.backbone!r}; choose one of {', '.join(family_names())}")
        if args.config is not None:
            raise ValueError(f"--config is for the voxelfm backbone; {backbone} takes --backbone-option KEY=VALUE")
        if args.dry_run:
            raise ValueError(f"--dry-run estimates the voxelfm ViT's wall time only; time a few scans of {backbone} "
                             "with a small manifest instead")
        model = load_backbone(backbone, weights=args.weights, device="cpu", **parse_options(args.backbone_options))
    if args.dry_run:
        from voxelfm.inference.calibrate import estimate_wall_time

        est = estimate_wall_time(
            model, items, workers=args.workers, preset=args.preset, crop_background=args.crop_background,
            max_patches=args.max_patches, mode=args.mode, window=args.window, overlap=args.overlap,
            dtype=args.dtype, memory_budget_gb=args.memory_budget_gb, spacing=args.spacing)
        print(est, file=sys.stdout, flush=True)
        return 0
    summary = extract_batch(
        model, items, args.output, preset=args.preset, crop_background=args.crop_background,
        max_patches=args.max_patches, mode=args.mode, window=args.window, overlap=args.overlap,
        device=args.device, dtype=args.dtype, memory_budget_gb=args.memory_budget_gb,
        workers=args.workers, format=args.format, retry_failed=args.retry_failed, spacing=args.spacing)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(summary, file=sys.stdout, flush=True)
        if not summary.all_ok:
            print(f"voxelfm extract: {summary.failed + summary.failed_before} item(s) without embeddings; "
                  f"errors in {os.path.join(args.output, 'index.csv')}", file=sys.stderr, flush=True)
    if summary.all_ok or distributed:
        return 0
    return 1
