"""Cohort throughput of ``voxelfm extract``: model-only vs end-to-end, in one run.

1. Generates ``--n`` phantom scans (``voxelfm phantoms``, NIfTI, ``--size``) unless ``--cohort``
   points at an existing cohort folder.
2. ``estimate``: the ``voxelfm extract --dry-run`` prediction (a short calibration).
3. ``end_to_end``: ``extract_batch`` over the whole cohort exactly as ``voxelfm extract`` runs it
   (``--workers`` background readers, atomic store writes): wall time, volumes/s, and the
   fraction of the wall time the model was computing (``model_busy``, from the forward times).
4. ``model_only``: the forward passes alone on ``--model-only-n`` volumes preprocessed beforehand
   in memory (no reading, no writing, no competing workers): volumes/s of the model by itself,
   scaled to the mean tokens of the cohort.

``end_to_end.volumes_per_s / model_only.volumes_per_s`` is the share of the model's throughput
the pipeline delivers. The 1-minute load average is recorded with every figure.

Usage::

    PYTHONPATH=src python benchmarks/extract_cohort.py --n 200 --dtype bf16
    PYTHONPATH=src python benchmarks/extract_cohort.py --n 20 --model vit_small   # quick

Writes benchmarks/results/extract_cohort[_<tag>].json and prints it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("VOXELFM_NO_PROGRESS", "1")


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help="phantom scans to generate")
    ap.add_argument("--size", default="demo", choices=("demo", "small", "full"))
    ap.add_argument("--cohort", default=None, help="existing cohort folder (cohort.csv) instead of generating")
    ap.add_argument("--model", default="vit_base")
    ap.add_argument("--dtype", default="bf16", choices=("fp32", "bf16"))
    ap.add_argument("--preset", default="default", choices=("default", "paper"))
    ap.add_argument("--max-patches", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model-only-n", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the generated cohort and store")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    import torch

    from _extraction_common import write_result
    from voxelfm.inference import extract_batch
    from voxelfm.inference.calibrate import estimate_wall_time
    from voxelfm.inference.extract import extract_preprocessed, inference_scope, resolve_preset
    from voxelfm.io import collect_inputs, read_volume
    from voxelfm.models import build_backbone
    from voxelfm.preprocess import preprocess_volume
    from voxelfm.utils.threads import configure_threads

    threads = configure_threads(args.threads).to_dict()
    work = Path(tempfile.mkdtemp(prefix="voxelfm_cohort_"))
    result: dict = {"n": args.n, "size": args.size, "model": args.model, "dtype": args.dtype,
                    "workers": args.workers, "threads": threads, "preset": args.preset,
                    "max_patches": args.max_patches}
    try:
        if args.cohort:
            cohort = Path(args.cohort)
        else:
            from voxelfm.data.phantoms import generate_cohort

            cohort = work / "cohort"
            t = time.perf_counter()
            generate_cohort(cohort, n=args.n, size=args.size, workers=2, progress=False)
            result["generate_seconds"] = round(time.perf_counter() - t, 2)
        items = collect_inputs([cohort / "cohort.csv"])
        result["n"] = len(items)
        torch.manual_seed(0)
        model = build_backbone(args.model).eval()
        kw = dict(preset=args.preset, max_patches=args.max_patches, dtype=args.dtype)

        load = _load()
        t = time.perf_counter()
        est = estimate_wall_time(model, items, workers=args.workers, **kw)
        result["estimate"] = {"seconds": round(est.seconds, 2), "calibration_seconds": round(time.perf_counter() - t, 2),
                              "forward_seconds_per_volume": round(est.forward_seconds, 3),
                              "read_seconds_per_volume": round(est.read_seconds, 3),
                              "mean_tokens": round(est.tokens), "gflops": round(est.gflops, 1), "load_1min": load}
        print(est, flush=True)

        load = _load()
        summary = extract_batch(model, items, work / "store", workers=args.workers, show_progress=False, **kw)
        result["end_to_end"] = {"seconds": round(summary.seconds, 2), "ok": summary.ok, "failed": summary.failed,
                                "volumes_per_s": round(summary.ok / summary.seconds, 4),
                                "model_seconds": round(summary.model_seconds, 2),
                                "model_busy": round(summary.model_busy, 4), "load_1min": [load, _load()]}
        result["estimate"]["error_vs_end_to_end"] = round(est.seconds / summary.seconds - 1, 3)
        print(summary, flush=True)

        from voxelfm.inference import EmbeddingStore

        store = EmbeddingStore(work / "store")
        tokens = [store.load(i).patch.shape[:3].numel() for i in store.ids]
        mean_tokens = sum(tokens) / len(tokens)
        sub = items[:: max(1, len(items) // max(1, args.model_only_n))][: args.model_only_n]
        preset = resolve_preset(model, args.preset)
        pres = [preprocess_volume(read_volume(it.path), preset, max_patches=args.max_patches,
                                  patch_size=model.patch_size) for it in sub]
        with inference_scope("cpu"):  # as extract_batch runs: weights packed once (in the warm-up), memory reused
            extract_preprocessed(model, pres[0], dtype=args.dtype)  # warm-up
            load = _load()
            t = time.perf_counter()
            for pre in pres:
                extract_preprocessed(model, pre, dtype=args.dtype)
            secs = time.perf_counter() - t
        sub_tokens = sum(p.num_tokens for p in pres) / len(pres)
        result["model_only"] = {"volumes": len(pres), "seconds": round(secs, 2), "mean_tokens": round(sub_tokens),
                                "volumes_per_s": round(len(pres) / secs, 4),
                                "volumes_per_s_at_cohort_tokens": round(len(pres) / secs * sub_tokens / mean_tokens, 4),
                                "load_1min": [load, _load()]}
        result["cohort_mean_tokens"] = round(mean_tokens)
        result["end_to_end_share_of_model_only"] = round(
            result["end_to_end"]["volumes_per_s"] / result["model_only"]["volumes_per_s_at_cohort_tokens"], 3)
        result["load_at_end"] = list(os.getloadavg())
        name = "extract_cohort" + (f"_{args.tag}" if args.tag else "")
        write_result(name, result)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
