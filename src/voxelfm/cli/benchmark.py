"""``voxelfm benchmark paper``: every prepared dataset × backbone → embeddings → probes → Table 1."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

HELP = "run the paper's evaluation: every dataset x backbone -> embeddings -> probe suite -> Table 1"

EPILOG = """examples:
  voxelfm benchmark paper --data roots.yaml --backbones voxelfm=weights/,random=vit_base -o bench/
  voxelfm benchmark paper --data roots.yaml --backbones voxelfm=weights/,random=vit_base -o bench/ --dry-run

roots.yaml maps dataset names to prepared folders (voxelfm datasets prepare ...) or to download
roots (prepared on the first run). Re-running with the same -o skips finished cells.
Exit status: 0 all cells finished, 1 some cell or probe run failed (see OUT/benchmark.json), 2 usage error."""


def _add_paper(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("--data", required=True, metavar="ROOTS.yaml",
                   help="YAML: dataset name -> prepared folder or download root (see docs/datasets.md)")
    p.add_argument("--backbones", required=True, nargs="+", metavar="NAME=WEIGHTS",
                   help="comma-separated columns: NAME=WEIGHTS (a voxelfm weights file/folder or a config name "
                        "such as vit_base for random init), FAMILY=WEIGHTS or NAME=FAMILY:WEIGHTS for other "
                        "backbone families")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="benchmark folder")
    p.add_argument("--reference", default=None, help="backbone the others are tested against (default: the first)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan, disk space and estimated compute time per cell; run nothing")
    p.add_argument("--only", default=None, metavar="NAMES", help="comma-separated datasets of ROOTS.yaml to run")
    p.add_argument("--preset", default=None, choices=("default", "paper"),
                   help="preprocessing preset (default: paper, the reference pipeline)")
    crop = p.add_mutually_exclusive_group()
    crop.add_argument("--crop-background", dest="crop_background", action="store_true", default=None,
                      help="crop to the body before resampling (the paper's default)")
    crop.add_argument("--no-crop-background", dest="crop_background", action="store_false")
    p.add_argument("--max-patches", type=int, default=None, metavar="N",
                   help="token budget per scan (default: 25000 as the paper; 0 = no limit)")
    p.add_argument("--dtype", default=None, choices=("fp32", "bf16", "fp16"), help="autocast dtype (default fp32)")
    p.add_argument("--memory-budget-gb", type=float, default=None, metavar="GB",
                   help="activation memory budget deciding full vs windowed forward passes")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--workers", type=int, default=2, metavar="N",
                   help="background processes reading + preprocessing scans (default 2)")
    p.add_argument("--probe-workers", type=int, default=1, metavar="N",
                   help="probe runs trained at the same time, one process each (default 1)")
    p.add_argument("--n-resamples", type=int, default=None, metavar="N",
                   help="bootstrap resamples for CIs and paired tests (default: each suite's own)")
    p.add_argument("--sample", type=int, default=5, metavar="N",
                   help="--dry-run: scans per dataset whose geometry is read for the estimate (default 5)")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--json", action="store_true", help="--dry-run: print the plan as JSON")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark_command", metavar="{paper}")
    _add_paper(sub.add_parser("paper", help="the paper's Table 1 over prepared datasets x backbones",
                              description="Every dataset x backbone: embeddings, the dataset's probe suite, then "
                                          "Table 1 (Markdown/CSV/LaTeX) with 95% CIs and Holm-adjusted paired "
                                          "tests against the reference, data-fraction and class-vs-patch figures."))


def _size(n: float) -> str:
    if not math.isfinite(n):
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _duration(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 2 * 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def format_plan(plan: dict) -> str:
    """The dry-run plan as text (one line per cell)."""
    hw = plan["hardware"]
    gpu = ", ".join(hw["gpu"]) or "none"
    lines = [f"hardware: {hw['cpu']} ({hw['cpu_count']} logical CPUs, {hw['torch_threads']} torch threads), "
             f"GPU: {gpu}, device {hw['device']}, torch {hw['torch']}"]
    for b, c in plan["calibration"].items():
        if c["kind"] == "vit-flops":
            lines.append(f"calibration {b}: {c['flops_per_second'] / 1e9:.1f} GFLOP/s "
                         f"(forward of {'x'.join(map(str, c['grid']))} tokens in {c['seconds']:.3f} s)")
        else:
            lines.append(f"calibration {b}: {c['seconds']:.2f} s per forward at its input size")
    header = ("dataset", "backbone", "status", "scans", "tokens/scan", "disk", "forward/scan", "extract",
              "probe runs")
    rows = []
    notes = []
    for c in plan["cells"]:
        e = c.get("estimate")
        if e is None:
            rows.append((c["dataset"], c["backbone"], c["status"], "?", "?", "?", "?", "?", "?"))
            notes.append(f"{c['dataset']}: {c['note']}")
            continue
        tok = "?" if not math.isfinite(e["mean_tokens"]) else f"{e['mean_tokens']:,.0f}"
        rows.append((c["dataset"], c["backbone"], c["status"], f"{e['n_scans']:,}", tok, _size(e["disk_bytes"]),
                     _duration(e["seconds_per_scan"]), _duration(e["extract_seconds"]), str(e["probe_runs"])))
        notes += [f"{c['dataset']}: {n}" for n in e["notes"]]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines.append("")
    for r in [header, *rows]:
        lines.append("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
    lines.append("")
    lines.append(f"to run: {_size(plan['total_disk_bytes'])} of embeddings, "
                 f"{_duration(plan['total_extract_seconds'])} of forward passes on this hardware "
                 "(reading and preprocessing scans and training probes come on top)")
    free = plan["free_disk_bytes"]
    lines.append(f"free disk space where -o is: {_size(free)}"
                 + ("  WARNING: less than the embeddings need" if free < plan["total_disk_bytes"] else ""))
    lines.append(f"reference backbone: {plan['reference']}")
    lines += [f"note: {n}" for n in dict.fromkeys(notes)]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from voxelfm.errors import ConfigError

    if getattr(args, "benchmark_command", None) is None:
        raise ConfigError("choose a benchmark: voxelfm benchmark paper --data ROOTS.yaml --backbones ... -o DIR")
    if args.max_patches is not None and args.max_patches < 0:
        raise ValueError(f"--max-patches must be >= 0, got {args.max_patches}")
    if args.workers < 0 or args.probe_workers < 1:
        raise ValueError("--workers must be >= 0 and --probe-workers >= 1")
    extract = {k: v for k, v in {"preset": args.preset, "crop_background": args.crop_background,
                                 "dtype": args.dtype, "memory_budget_gb": args.memory_budget_gb}.items()
               if v is not None}
    if args.max_patches is not None:
        extract["max_patches"] = args.max_patches or None
    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    common = dict(reference=args.reference, extract=extract, device=args.device, n_resamples=args.n_resamples,
                  only=only)
    if args.dry_run:
        from voxelfm.benchmark import plan_paper_benchmark

        plan = plan_paper_benchmark(args.data, args.backbones, args.output, sample=args.sample, **common)
        print(json.dumps(plan, indent=1, default=str) if args.json else format_plan(plan))
        return 0
    from voxelfm.benchmark import run_paper_benchmark

    res = run_paper_benchmark(args.data, args.backbones, args.output, read_workers=args.workers,
                              probe_workers=args.probe_workers, figures=not args.no_figures, **common)
    if "table_md" in res.paths:
        print(res.paths["table_md"].read_text())
    print(f"cells: {len(res.ran)} run, {len(res.skipped)} reused, {len(res.failed)} failed")
    for key in res.failed:
        print(f"  {key}: {res.cells[key].get('error', '')}", file=sys.stderr)
    probe_failures = [(k, f) for k, c in res.cells.items() for f in c.get("probe_failures", [])]
    for key, f in probe_failures:
        print(f"  {key}: probe run {' / '.join(f['run'])} failed: {f['error']}", file=sys.stderr)
    print(f"results in {Path(args.output)} (per-cell time and hardware in {res.paths['state']})")
    return 1 if res.failed or probe_failures else 0
