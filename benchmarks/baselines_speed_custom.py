"""Speed and peak memory per volume: m3d_clip, radfm and ct_clip, ours against the ORIGINAL code.

One synthetic 300×512×512 chest CT (LPS-stored int16 NIfTI, 0.7 × 0.7 mm in-plane, 1.0 mm slices)
goes through each family twice in the same run: the original implementation (imported from a
local checkout, with the test harness's shims of ``tests/baselines/golden/make_golden.py``) with its
own preprocessing code, and voxelfm's backbone (``load_backbone`` + ``preprocess`` + ``forward``),
in fp32 and under bf16 autocast. Every measurement runs in its own subprocess so ``peak RSS`` is
that volume's (model + reading + preprocessing + forward). The original's random weights are saved in
its checkpoint layout and loaded by ours, so the outputs are compared too (cosine of the global
embeddings; fp32 should be ~1). ``uptime`` load averages are recorded with every figure: the machine
is shared, so compare ours/original ratios from the same run, not absolute seconds across runs.

    python benchmarks/baselines_speed_custom.py --originals /tmp/originals --monai-path /tmp/monai130

``--originals`` holds checkouts ``M3D``, ``RadFM`` and ``CT-CLIP`` (see make_golden.py); M3D's
original runs on its pinned MONAI 1.3.0 (``--monai-path``); ours on the installed MONAI.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _extraction_common import peak_rss_mb, synthetic_ct, write_result  # noqa: E402

FAMILIES = ("m3d_clip", "radfm", "ct_clip")
SPACING = (1.0, 0.7, 0.7)  # (sz, sy, sx) mm


def _loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def write_nifti_lps(path: Path, canonical: np.ndarray, spacing) -> None:
    """Canonical (S, P, L) HU → LPS-stored int16 NIfTI (i → L, j → P, k → S), as DICOM-derived files."""
    import nibabel as nib

    sz, sy, sx = spacing
    affine = np.diag([-sx, -sy, sz, 1.0])  # RAS affine of an LPS-stored grid
    img = nib.Nifti1Image(np.round(np.transpose(canonical, (2, 1, 0))).astype(np.int16), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))


# ----------------------------------------------------------------------------- originals
def _harness(originals: Path):
    sys.path.insert(0, str(HERE.parent / "tests" / "baselines" / "golden"))
    import make_golden as mg

    return mg


def _original(family: str, originals: Path, nifti: Path, weights: Path, torch):
    """(preprocess() -> input tensor, model(x) -> global embedding); saves the weights for ours."""
    mg = _harness(originals)
    torch.manual_seed(0)
    if family == "m3d_clip":
        import monai.transforms as mtf

        repo = originals / "M3D"
        vit_mod = mg._load_file("m3d_original_vit", repo / "LaMed/src/model/multimodal_encoder/vit.py")
        model = vit_mod.ViT(in_channels=1, img_size=(32, 256, 256), patch_size=(4, 16, 16), hidden_size=768,
                            mlp_dim=3072, num_layers=12, num_heads=12, pos_embed="perceptron", dropout_rate=0.0,
                            spatial_dims=3, classification=True).eval()
        torch.save(model.state_dict(), weights)  # the bare pretrained_ViT.bin layout
        ns = mg._exec_definitions(repo / "Data/process/m3d_seg_data_preprocess.py", ["normalize"], {"np": np})
        ns = mg._exec_definitions(repo / "Data/process/m3d_seg_data_prepare.py", ["transform"], {"mtf": mtf, **ns})

        def preprocess():
            image = np.asarray(mtf.LoadImage(image_only=True)(str(nifti)))[np.newaxis]
            image = np.swapaxes(ns["normalize"](image), -1, -3)
            image = image - image.min()
            image = image / np.clip(image.max(), a_min=1e-8, a_max=None)
            out = ns["transform"]({"image": image, "label": np.zeros_like(image)})["image"]
            return torch.as_tensor(np.asarray(out))[None].float()

        return preprocess, lambda x: model(x)[0][:, 0]
    if family == "radfm":
        import SimpleITK as sitk

        repo = originals / "RadFM"
        mg._namespace_package("radfm_original", repo / "src/Model/RadFM")
        vit_3d = importlib.import_module("radfm_original.vit_3d")
        model = vit_3d.ViT(image_size=512, frames=512, image_patch_size=32, frame_patch_size=4, dim=768, depth=12,
                           heads=8, mlp_dim=2048, dropout=0.1, emb_dropout=0.1).eval()
        torch.save({f"embedding_layer.vision_encoder.{k}": v for k, v in model.state_dict().items()}, weights)
        ns = mg._exec_definitions(repo / "src/Dataset/multi_dataset_test.py", ["stack_images"], {"torch": torch})

        def preprocess():
            arr = sitk.GetArrayFromImage(sitk.ReadImage(str(nifti))).astype(np.float32).transpose(1, 2, 0)
            arr = (arr - arr.min()) / (arr.max() - arr.min())
            return ns["stack_images"]([np.concatenate([arr[np.newaxis]] * 3, axis=0)]).float()

        return preprocess, lambda x: model(x)[0].mean(dim=1)
    if family == "ct_clip":
        import pandas as pd

        repo = originals / "CT-CLIP"
        mg._namespace_package("transformer_maskgit", repo / "transformer_maskgit/transformer_maskgit")
        attention = importlib.import_module("transformer_maskgit.attention")
        ctvit = importlib.import_module("transformer_maskgit.ctvit")
        for mod in (attention, ctvit):
            mod.torch = mg._CPUTorch(torch)
        enc = ctvit.CTViT(dim=512, codebook_size=8192, image_size=480, patch_size=20, temporal_patch_size=10,
                          spatial_depth=4, temporal_depth=4, dim_head=32, heads=8).eval()
        latent = torch.nn.Linear(294912, 512, bias=False)  # CTCLIP.to_visual_latent (run_zero_shot.py)
        sd = {f"visual_transformer.{k}": v for k, v in enc.state_dict().items()}
        sd["to_visual_latent.weight"] = latent.weight.detach()
        torch.save(sd, weights)
        data_mod = mg._load_file("ctclip_data_inference_nii", repo / "scripts/data_inference_nii.py")
        meta = pd.DataFrame({"VolumeName": [nifti.name], "RescaleSlope": [1.0], "RescaleIntercept": [0.0],
                             "XYSpacing": [f"[{SPACING[2]}, {SPACING[1]}]"], "ZSpacing": [SPACING[0]]})

        def forward(x):  # CTCLIP.forward's image path (ct_clip.py L715-767)
            tokens = enc(x, return_encoded_tokens=True)
            return torch.nn.functional.normalize(latent(tokens.mean(dim=1).reshape(x.shape[0], -1)), dim=-1)

        return (lambda: data_mod.CTReportDatasetinfer.nii_img_to_tensor(None, str(nifti), meta)[None].float(),
                forward)
    raise ValueError(family)


def _ours(family: str, nifti: Path, weights: Path, torch):
    import voxelfm

    model = voxelfm.load_backbone(family, weights=weights)
    return (lambda: model.preprocess(nifti).array[None]), (lambda x: model(x)["x_norm_clstoken"])


def worker(args: argparse.Namespace) -> None:
    if args.impl == "original":
        if args.family == "m3d_clip" and args.monai_path:
            sys.path.insert(0, str(args.monai_path))
        from transformers import BertModel  # noqa: F401 - before the torchvision stub
        sys.path.insert(0, str(HERE.parent / "tests" / "baselines" / "golden"))
        import make_golden as mg

        mg._stub_torchvision()
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.impl == "original":
        preprocess, forward = _original(args.family, args.originals, args.nifti, args.weights, torch)
    else:
        preprocess, forward = _ours(args.family, args.nifti, args.weights, torch)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    x = preprocess()
    t_pre = time.perf_counter() - t0
    load_before = _loadavg()
    t0 = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
        emb = forward(x)
    t_fwd = time.perf_counter() - t0
    np.save(args.out_embedding, emb.float().numpy())
    print(json.dumps({"family": args.family, "impl": args.impl, "dtype": args.dtype, "load_model_s": t_load,
                      "preprocess_s": t_pre, "forward_s": t_fwd, "per_volume_s": t_pre + t_fwd,
                      "peak_rss_mb": peak_rss_mb(), "input_shape": list(x.shape), "loadavg_forward": load_before,
                      "loadavg_end": _loadavg()}))


def markdown_table(result: dict) -> str:
    """The docs' table from a result JSON of this benchmark."""
    rows = {(r["family"], r["impl"], r["dtype"]): r for r in result["rows"] if "dtype" in r and "impl" in r
            and "error" not in r}
    pairs = {(r["family"], r["dtype"]): r for r in result["rows"] if "cosine_original_vs_ours" in r}
    out = ["| backbone | dtype | original: preprocess + forward = per volume | ours: preprocess + forward = per "
           "volume | ours / original | peak RSS original → ours | cosine(original, ours) | load avg (1 min) |",
           "|---|---|---|---|---|---|---|---|"]
    for (family, dtype), c in pairs.items():
        o, u = rows[(family, "original", dtype)], rows[(family, "ours", dtype)]
        out.append(f"| `{family}` | {dtype} | {o['preprocess_s']:.0f} + {o['forward_s']:.0f} = {o['per_volume_s']:.0f} s "
                   f"| {u['preprocess_s']:.0f} + {u['forward_s']:.0f} = {u['per_volume_s']:.0f} s "
                   f"| {c['ours_over_original_per_volume']:.2f} | {o['peak_rss_mb'] / 1024:.1f} → "
                   f"{u['peak_rss_mb'] / 1024:.1f} GiB | {c['cosine_original_vs_ours']:.6f} "
                   f"| {o['loadavg_end'][0]:.0f} / {u['loadavg_end'][0]:.0f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--originals", type=Path, help="folder with checkouts M3D, RadFM, CT-CLIP")
    ap.add_argument("--monai-path", type=Path, default=None, help="folder holding monai==1.3.0 (M3D's pin)")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512), metavar=("D", "H", "W"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="baselines_speed_custom")
    ap.add_argument("--table", type=Path, default=None, help="print the Markdown table of a result JSON and exit")
    ap.add_argument("--worker", nargs=3, metavar=("FAMILY", "IMPL", "DTYPE"), help=argparse.SUPPRESS)
    ap.add_argument("--nifti", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out-embedding", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.table is not None:
        print(markdown_table(json.loads(args.table.read_text())))
        return
    if args.worker:
        args.family, args.impl, args.dtype = args.worker
        worker(args)
        return
    if args.originals is None:
        ap.error("--originals is required")
    rows = []
    with tempfile.TemporaryDirectory(prefix="baselines_speed_") as tmp:
        tmp = Path(tmp)
        nifti = tmp / "chest_ct.nii.gz"
        write_nifti_lps(nifti, synthetic_ct(tuple(args.shape)), SPACING)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore"}
        for family in args.families.split(","):
            weights = tmp / f"{family}.pt"
            by_dtype: dict[str, dict[str, np.ndarray]] = {}
            for dtype in args.dtypes.split(","):
                embs = by_dtype.setdefault(dtype, {})
                for impl in ("original", "ours"):  # the original first: it writes the weights ours loads
                    emb = tmp / f"{family}_{impl}_{dtype}.npy"
                    cmd = [sys.executable, __file__, "--worker", family, impl, dtype, "--nifti", str(nifti),
                           "--weights", str(weights), "--out-embedding", str(emb), "--originals",
                           str(args.originals), "--threads", str(args.threads)]
                    if args.monai_path:
                        cmd += ["--monai-path", str(args.monai_path)]
                    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                    if proc.returncode != 0:
                        rows.append({"family": family, "impl": impl, "dtype": dtype,
                                     "error": proc.stderr.strip().splitlines()[-1:]})
                        print(f"{family} {impl} {dtype}: FAILED {proc.stderr.strip()[-2000:]}", file=sys.stderr)
                        continue
                    row = json.loads(proc.stdout.strip().splitlines()[-1])
                    rows.append(row)
                    embs[impl] = np.load(emb).ravel()
                    print(f"{family:9s} {impl:8s} {dtype}: pre {row['preprocess_s']:.1f} s, forward "
                          f"{row['forward_s']:.1f} s, peak RSS {row['peak_rss_mb']:.0f} MiB, load {row['loadavg_end']}",
                          flush=True)
                if len(embs) == 2:
                    a, b = embs["original"], embs["ours"]
                    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
                    ratio = rows[-1]["per_volume_s"] / rows[-2]["per_volume_s"]
                    rows.append({"family": family, "dtype": dtype, "cosine_original_vs_ours": cos,
                                 "ours_over_original_per_volume": ratio,
                                 "ours_over_original_forward": rows[-1]["forward_s"] / rows[-2]["forward_s"]})
                    print(f"{family:9s} {dtype}: cosine(original, ours) {cos:.6f}, time ours/original {ratio:.2f}",
                          flush=True)
            if {"fp32", "bf16"} <= set(by_dtype):  # how far bf16 itself moves each implementation's output
                for impl in ("original", "ours"):
                    a, b = by_dtype["fp32"].get(impl), by_dtype["bf16"].get(impl)
                    if a is not None and b is not None:
                        cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
                        rows.append({"family": family, "impl": "bf16_vs_fp32", "of": impl, "cosine": cos})
                        print(f"{family:9s} {impl}: cosine(fp32, bf16) {cos:.6f}", flush=True)
    write_result(args.name, {"shape": list(args.shape), "spacing_mm": list(SPACING), "rows": rows})


if __name__ == "__main__":
    main()
