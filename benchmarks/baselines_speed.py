"""Per-backbone seconds and peak RSS per volume for a 300×512×512 chest CT: voxelfm's baselines
(``voxelfm.load_backbone(NAME)`` + ``extract_features``) against the original implementations
(merlin-vlm's I3ResNet + its MONAI transforms, lighter-zoo's SegResEncoder + the CT-FM repository's
chain, fmcib's LoadModel + get_transforms), fp32 and bf16 autocast, in the same run.

Each measurement runs in its own process (peak RSS is per process) on one synthetic chest CT written
once as an int16 NIfTI (spacing 1.0 × 0.7 × 0.7 mm, S × P × L): the time is reading + preprocessing +
one forward, random weights (speed does not depend on their values). ``uptime`` load averages are
recorded before and after every run; compare ours/original as ratios within this run.

    PYTHONPATH=src python benchmarks/baselines_speed.py [--families merlin,ctfm,fmcib] [--dtypes fp32,bf16]

Needs the oracle packages (pip install --no-deps merlin-vlm lighter-zoo foundation-cancer-image-biomarker
loguru); a family whose original is missing is measured for voxelfm only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _extraction_common import peak_rss_mb, synthetic_ct, write_nifti_ras, write_result  # noqa: E402

SHAPE = (300, 512, 512)
SPACING = (1.0, 0.7, 0.7)
SEED_VOXEL = (150.4, 200.3, 180.2)  # FMCIB lesion seed (canonical d, h, w)


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _autocast(dtype: str):
    import contextlib

    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()


def _worker(family: str, impl: str, dtype: str, path: str) -> dict:
    import torch

    warnings.simplefilter("ignore")
    t_load = time.perf_counter()
    if impl == "voxelfm":
        import voxelfm

        model = voxelfm.load_backbone(family, weights=None)
        load_s = time.perf_counter() - t_load
        opts = {"seed": SEED_VOXEL, "seed_space": "voxel"} if family == "fmcib" else {}
        t0 = time.perf_counter()
        f = voxelfm.extract_features(model, path, dtype=dtype, **opts)
        total = time.perf_counter() - t0
        return {"load_s": load_s, "seconds": total, "forward_s": f.record["forward_seconds"],
                "input_shape": f.record["final_shape"], "emb": list(f.cls.shape)}
    from tests.baselines import oracles

    if family == "merlin":
        model = oracles.merlin_i3resnet()
        _, mt = oracles.merlin_modules()
        load_s = time.perf_counter() - t_load
        t0 = time.perf_counter()
        x = mt.ImageTransforms({"image": path})["image"]
        t1 = time.perf_counter()
        with torch.no_grad(), _autocast(dtype):
            emb = model(x[None].as_tensor())[0]
    elif family == "ctfm":
        import monai

        cls = oracles.lighter_zoo_encoder()
        model = cls(spatial_dims=3, in_channels=1, init_filters=32, blocks_down=(1, 2, 2, 4, 4)).eval()
        load_s = time.perf_counter() - t_load
        t = monai.transforms
        chain = t.Compose([t.LoadImaged(keys=["image"], ensure_channel_first=True), t.EnsureTyped(keys=["image"]),
                           t.Orientationd(keys=["image"], axcodes="SPL"),
                           t.Spacingd(keys=["image"], pixdim=[3, 1, 1], mode="bilinear"),
                           t.CropForegroundd(keys=["image"], source_key="image"),
                           t.ScaleIntensityRanged(keys="image", a_min=-1024, a_max=2048, b_min=0, b_max=1, clip=True)])
        t0 = time.perf_counter()
        x = chain({"image": path})["image"].as_tensor()
        t1 = time.perf_counter()
        with torch.no_grad(), _autocast(dtype):
            emb = torch.nn.functional.adaptive_avg_pool3d(model(x[None])[-1], 1).flatten(1)
    elif family == "fmcib":
        LoadModel = oracles.fmcib_load_model_cls()
        model = LoadModel(trunk=oracles.fmcib_trunk(), heads=[]).eval()
        tr = oracles.fmcib_transforms("NibabelReader")
        load_s = time.perf_counter() - t_load
        from voxelfm.io import read_volume

        lps = read_volume(path).index_to_lps([SEED_VOXEL])[0]
        t0 = time.perf_counter()
        x = tr({"image_path": path, "coordX": lps[0], "coordY": lps[1], "coordZ": lps[2]})
        t1 = time.perf_counter()
        with torch.no_grad(), _autocast(dtype):
            emb = model(x[None])
    else:
        raise ValueError(family)
    total = time.perf_counter() - t0
    return {"load_s": load_s, "seconds": total, "forward_s": total - (t1 - t0), "input_shape": list(x.shape[1:]),
            "emb": list(emb.shape)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="merlin,ctfm,fmcib")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--impls", default="voxelfm,original")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="runs per (family, dtype, impl), interleaved")
    ap.add_argument("--name", default="baselines_speed", help="results/NAME.json")
    ap.add_argument("--worker", nargs=4, metavar=("FAMILY", "IMPL", "DTYPE", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        family, impl, dtype, path = args.worker
        out = _worker(family, impl, dtype, path)
        out["peak_rss_mb"] = round(peak_rss_mb(), 1)
        print("RESULT " + json.dumps(out))
        return
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chest.nii.gz"
        write_nifti_ras(path, synthetic_ct(SHAPE), SPACING)
        for family in args.families.split(","):
            for dtype in args.dtypes.split(","):
                for impl in [i for _ in range(args.repeats) for i in args.impls.split(",")]:
                    before = _load()
                    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT / "src")}
                    proc = subprocess.run([sys.executable, __file__, "--worker", family, impl, dtype, str(path),
                                           "--threads", str(args.threads)], capture_output=True, text=True, env=env)
                    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                    rec = {"family": family, "impl": impl, "dtype": dtype, "load_before": before, "load_after": _load()}
                    if line is None:
                        rec["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1][:300]
                    else:
                        rec.update(json.loads(line[len("RESULT "):]))
                    print(json.dumps(rec), flush=True)
                    runs.append(rec)
                    # written after every run: a long benchmark interrupted keeps what it measured
                    write_result(args.name, {"shape": list(SHAPE), "spacing_mm": list(SPACING),
                                                     "threads": args.threads, "runs": runs})


if __name__ == "__main__":
    main()
