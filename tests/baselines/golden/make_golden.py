"""Golden fixtures for the m3d_clip, radfm and ct_clip backbones, made by the ORIGINAL code.

This script is ours; the originals' code is imported from local checkouts given on the command line
(never copied into voxelfm). It builds small random-weight configurations of the original classes,
saves their checkpoints in the original layouts and the original outputs on a fixed input, and runs
the originals' preprocessing on a small oblique, LPS-stored NIfTI phantom. The tests in
``tests/baselines/test_native_families.py`` load the checkpoints through ``voxelfm.load_backbone`` and
compare.

Usage (commits read: see ``ORIGINALS`` below; MONAI 1.3.0 is M3D's pinned version)::

    pip install --target /tmp/monai130 --no-deps "monai==1.3.0"
    pip install "torch==2.13.0" einops beartype; pip install --no-deps "vector-quantize-pytorch==1.1.2"
    python tests/baselines/golden/make_golden.py --m3d M3D --radfm RadFM --ctclip CT-CLIP \\
        --monai-path /tmp/monai130 -o tests/baselines/data

where M3D, RadFM and CT-CLIP are checkouts (or ``git archive`` extractions) of BAAI-DCAI/M3D,
chaoyi-wu/RadFM and ibrahimethemhamamci/CT-CLIP.

Shims (test-harness only, none changes a computation): ``torchvision`` is stubbed (the model paths
import it but do not use it; its PyPI wheels do not load against the CPU torch build); CT-CLIP's
hard-coded ``torch.device('cuda')`` is answered with the CPU device; CTCLIP's tokenizer download
is skipped (the image path does not use it) and a tiny local BERT stands in for CXR-BERT; scripts
whose module level needs data paths (M3D's, RadFM's dataset code) have only the named function or
assignment executed from their source.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np

ORIGINALS = {
    "BAAI-DCAI/M3D": "63e72005a2304eda74579870239bfc7b04b0edae",
    "chaoyi-wu/RadFM": "9efba84cced9ffdcbce00d6005f255414ffa8c36",
    "ibrahimethemhamamci/CT-CLIP": "a2a155c601987820433c01db69b64d701d3d229d",
}
SEED = 1234


# ----------------------------------------------------------------------------- harness helpers
def _stub_torchvision() -> None:
    tv = types.ModuleType("torchvision")
    for sub in ("transforms", "utils", "models"):
        mod = types.ModuleType(f"torchvision.{sub}")
        setattr(tv, sub, mod)
        sys.modules[f"torchvision.{sub}"] = mod
    sys.modules["torchvision"] = tv


def _namespace_package(name: str, folder: Path) -> None:
    """Make ``name`` a package over ``folder`` without running its ``__init__`` (which imports
    training code, data sets and downloads)."""
    pkg = types.ModuleType(name)
    pkg.__path__ = [str(folder)]  # type: ignore[attr-defined]
    sys.modules[name] = pkg


def _load_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _exec_definitions(path: Path, names: list[str], namespace: dict) -> dict:
    """Execute only the top-level functions / assignments called ``names`` of a script."""
    tree = ast.parse(path.read_text())
    keep = [node for node in tree.body
            if (isinstance(node, ast.FunctionDef) and node.name in names)
            or (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in names for t in node.targets))]
    found = {n.name if isinstance(n, ast.FunctionDef) else n.targets[0].id for n in keep}  # type: ignore[union-attr]
    if found != set(names):
        raise SystemExit(f"{path}: did not find {sorted(set(names) - found)}")
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    return namespace


def _randomise(module, torch, seed: int) -> None:
    """Non-trivial random values for every parameter and float buffer (norms included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if t.is_floating_point() and t.numel():
                t.copy_(torch.randn(t.shape, generator=g) * 0.2 + (1.0 if t.ndim == 1 and "weight" in name else 0.0))


def phantom_nifti(path: Path) -> dict:
    """A small CT phantom stored LPS (i → L, j → P, k → S) with an oblique affine, int16 HU."""
    import nibabel as nib

    shape, spacing = (40, 36, 24), (0.8, 0.8, 1.6)
    i, j, k = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    rng = np.random.default_rng(SEED)
    vol = np.full(shape, -1000.0, dtype=np.float32)
    body = ((i - 19.5) / 17) ** 2 + ((j - 18) / 14) ** 2 < 1
    vol[body] = 40.0
    lung_r = ((i - 11) / 6) ** 2 + ((j - 17) / 8) ** 2 + ((k - 13) / 9) ** 2 < 1
    vol[lung_r] = -850.0
    vol[((i - 27) / 4) ** 2 + ((j - 20) / 6) ** 2 < 1] = -700.0  # smaller left lung, all slices
    vol[((i - 19.5) / 2.5) ** 2 + ((j - 28) / 2.5) ** 2 < 1] = 700.0  # spine (posterior)
    vol[(k < 3) & body] = 300.0  # inferior slab
    vol += rng.normal(0, 15, shape).astype(np.float32)
    theta = np.deg2rad(8.0)  # rotation about z and a small tilt: oblique
    rz = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    tilt = np.deg2rad(4.0)
    rx = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    lps_axes = np.diag([1.0, 1.0, 1.0])  # i → +x (L), j → +y (P), k → +z (S) in LPS
    direction_lps = rz @ rx @ lps_axes
    direction_ras = np.diag([-1.0, -1.0, 1.0]) @ direction_lps
    affine = np.eye(4)
    affine[:3, :3] = direction_ras @ np.diag(spacing)
    affine[:3, 3] = (12.0, -30.0, -80.0)
    img = nib.Nifti1Image(np.round(vol).astype(np.int16), affine)
    img.header.set_slope_inter(1.0, 0.0)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return {"shape_ijk": list(shape), "spacing_ijk": list(spacing), "orientation": "LPS-stored, oblique 8 deg "
            "about z and 4 deg tilt"}


def _stats(a: np.ndarray) -> dict:
    a = np.asarray(a, dtype=np.float64)
    return {"shape": list(a.shape), "sum": float(a.sum()), "min": float(a.min()), "max": float(a.max()),
            "sum_sq": float((a ** 2).sum())}


# ----------------------------------------------------------------------------- M3D-CLIP
def make_m3d(repo: Path, out: Path, nifti: Path, torch) -> dict:
    import monai
    import monai.transforms as mtf

    vit_mod = _load_file("m3d_original_vit", repo / "LaMed/src/model/multimodal_encoder/vit.py")
    cfg = {"img_size": [8, 32, 32], "patch_size": [4, 16, 16], "hidden_size": 48, "mlp_dim": 96, "num_layers": 2,
           "num_heads": 4}
    torch.manual_seed(SEED)
    vit = vit_mod.ViT(in_channels=1, img_size=tuple(cfg["img_size"]), patch_size=tuple(cfg["patch_size"]),
                      hidden_size=cfg["hidden_size"], mlp_dim=cfg["mlp_dim"], num_layers=cfg["num_layers"],
                      num_heads=cfg["num_heads"], pos_embed="perceptron", dropout_rate=0.0, spatial_dims=3,
                      classification=True)  # as M3DCLIP.__init__ builds vision_encoder
    _randomise(vit, torch, SEED)
    vit.eval()
    # full M3D-CLIP layout (M3DCLIP.state_dict(): vision_encoder.*, language_encoder.*, projections)
    sd = {f"vision_encoder.{k}": v for k, v in vit.state_dict().items()}
    g = torch.Generator().manual_seed(SEED + 1)
    h = cfg["hidden_size"]
    sd.update({"mm_vision_proj.weight": torch.randn(h, h, generator=g), "mm_vision_proj.bias": torch.zeros(h),
               "mm_language_proj.weight": torch.randn(h, h, generator=g), "mm_language_proj.bias": torch.zeros(h),
               "logit_scale": torch.tensor(float(np.log(1 / 0.07))),
               "language_encoder.embeddings.word_embeddings.weight": torch.randn(8, h, generator=g)})
    torch.save(sd, out / "m3d_clip_pytorch_model.bin")
    x = torch.rand(2, 1, *cfg["img_size"], generator=torch.Generator().manual_seed(SEED + 2))
    with torch.no_grad():
        y, _ = vit(x)
    torch.save({"input": x, "output": y}, out / "m3d_clip_golden.pt")

    # preprocessing: m3d_seg_data_preprocess.py (LoadImaged + AddChanneld, normalize) then
    # m3d_seg_data_prepare.py (swapaxes, min-max, CropForegroundd + Resized)
    ns = _exec_definitions(repo / "Data/process/m3d_seg_data_preprocess.py", ["normalize"], {"np": np})
    ns = _exec_definitions(repo / "Data/process/m3d_seg_data_prepare.py", ["transform"], {"mtf": mtf, **ns})
    image = np.asarray(mtf.LoadImage(image_only=True)(str(nifti)))[np.newaxis]  # LoadImaged + AddChanneld
    image = ns["normalize"](image)
    image_array = np.swapaxes(image, -1, -3)  # m3d_seg_data_prepare.py: "reshape C*D*H*W"
    image_array = image_array - image_array.min()
    image_array = image_array / np.clip(image_array.max(), a_min=1e-8, a_max=None)
    items = ns["transform"]({"image": image_array, "label": np.zeros_like(image_array)})
    pre = np.asarray(items["image"])
    np.savez_compressed(out / "m3d_clip_preprocess.npz", sub=pre[0, :, ::4, ::4].astype(np.float32))
    return {"config": cfg, "monai": monai.__version__, "preprocess": _stats(pre), "subsample": "[0, :, ::4, ::4]"}


# ----------------------------------------------------------------------------- RadFM
def make_radfm(repo: Path, out: Path, nifti: Path, torch) -> dict:
    import SimpleITK as sitk

    _namespace_package("radfm_original", repo / "src/Model/RadFM")
    vit_3d = importlib.import_module("radfm_original.vit_3d")
    cfg = {"image_size": 32, "image_patch_size": 8, "frames": 64, "frame_patch_size": 4, "dim": 48, "depth": 2,
           "heads": 2, "mlp_dim": 64, "dim_head": 8}
    torch.manual_seed(SEED)
    vit = vit_3d.ViT(image_size=cfg["image_size"], frames=cfg["frames"], image_patch_size=cfg["image_patch_size"],
                     frame_patch_size=cfg["frame_patch_size"], dim=cfg["dim"], depth=cfg["depth"], heads=cfg["heads"],
                     mlp_dim=cfg["mlp_dim"], dim_head=cfg["dim_head"], dropout=0.1, emb_dropout=0.1)
    _randomise(vit, torch, SEED)
    vit.eval()
    # full RadFM layout (MultiLLaMAForCausalLM.state_dict()): vision encoder + other parts (stand-ins)
    sd = {f"embedding_layer.vision_encoder.{k}": v for k, v in vit.state_dict().items()}
    g = torch.Generator().manual_seed(SEED + 1)
    sd.update({"embedding_layer.perceiver.latents": torch.randn(4, cfg["dim"], generator=g),
               "embedding_layer.fc.weight": torch.randn(16, cfg["dim"], generator=g),
               "lang_model.model.embed_tokens.weight": torch.randn(8, 16, generator=g)})
    torch.save(sd, out / "radfm_pytorch_model.bin")
    one = torch.rand(2, 1, cfg["image_size"], cfg["image_size"], 8, generator=torch.Generator().manual_seed(SEED + 2))
    x = one.expand(-1, 3, -1, -1, -1).contiguous()  # grayscale replicated to 3 channels
    with torch.no_grad():
        tokens, pos = vit(x)
    torch.save({"input": one, "tokens": tokens}, out / "radfm_golden.pt")

    # preprocessing: radiopaedia.py min-max, multi_dataset_test.py stack_images (nearest to 512x512xD')
    ns = _exec_definitions(repo / "src/Dataset/multi_dataset_test.py", ["stack_images"], {"torch": torch})
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(nifti))).astype(np.float32)  # (k, j, i)
    image = arr.transpose(1, 2, 0)  # adapter: rows x columns x slices, depth last (RadFM's own stacks)
    image = (image - image.min()) / (image.max() - image.min())  # radiopaedia.py
    image = np.concatenate([image[np.newaxis]] * 3, axis=0)  # grayscale to 3 channels
    stacked = ns["stack_images"]([image])  # (1, 3, 512, 512, D')
    pre = stacked[0].numpy()
    np.savez_compressed(out / "radfm_preprocess.npz", sub=pre[0, ::8, ::8, :].astype(np.float32))
    return {"config": cfg, "preprocess": _stats(pre[0]), "subsample": "[0, ::8, ::8, :]",
            "channels_equal": bool(np.array_equal(pre[0], pre[1]) and np.array_equal(pre[0], pre[2]))}


# ----------------------------------------------------------------------------- CT-CLIP
class _CPUTorch(types.ModuleType):
    """``torch`` for CT-CLIP's modules with ``torch.device('cuda')`` answered by the CPU device."""

    def __init__(self, torch) -> None:
        super().__init__("torch")
        self._torch = torch

    def __getattr__(self, name):
        return getattr(self._torch, name)

    def device(self, *args, **kwargs):
        return self._torch.device("cpu")


def make_ctclip(repo: Path, out: Path, nifti: Path, torch) -> dict:
    import pandas as pd
    from transformers import BertConfig, BertModel

    _namespace_package("transformer_maskgit", repo / "transformer_maskgit/transformer_maskgit")
    attention = importlib.import_module("transformer_maskgit.attention")
    ctvit = importlib.import_module("transformer_maskgit.ctvit")
    sys.path.insert(0, str(repo / "CT_CLIP"))
    ct_clip_mod = importlib.import_module("ct_clip.ct_clip")
    cpu_torch = _CPUTorch(torch)
    for mod in (attention, ctvit, ct_clip_mod):
        mod.torch = cpu_torch

    class _NoTokenizer:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            return None

    ct_clip_mod.BertTokenizer = _NoTokenizer
    cfg = {"dim": 32, "codebook_size": 64, "image_size": 32, "patch_size": 8, "temporal_patch_size": 4,
           "spatial_depth": 2, "temporal_depth": 2, "dim_head": 8, "heads": 4, "depth_size": 16}
    torch.manual_seed(SEED)
    image_encoder = ctvit.CTViT(dim=cfg["dim"], codebook_size=cfg["codebook_size"], image_size=cfg["image_size"],
                                patch_size=cfg["patch_size"], temporal_patch_size=cfg["temporal_patch_size"],
                                spatial_depth=cfg["spatial_depth"], temporal_depth=cfg["temporal_depth"],
                                dim_head=cfg["dim_head"], heads=cfg["heads"])
    text_encoder = BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=32, max_position_embeddings=16))
    g = cfg["image_size"] // cfg["patch_size"]
    clip = ct_clip_mod.CTCLIP(image_encoder=image_encoder, text_encoder=text_encoder, dim_image=g * g * cfg["dim"],
                              dim_text=16, dim_latent=cfg["dim"], extra_latent_projection=False, use_mlm=False,
                              downsample_image_embeds=False, use_all_token_embeds=False)  # as run_zero_shot.py
    _randomise(clip, torch, SEED)
    with torch.no_grad():  # codebook rows are unit vectors as after training (cosine-sim codebook)
        cb = clip.visual_transformer.vq._codebook.embed
        cb.copy_(torch.nn.functional.normalize(cb, dim=-1))
    clip.eval()
    torch.save(clip.state_dict(), out / "ct_clip_CT-CLIP_v2.pt")  # CTCLIP.state_dict(), as the trainer saves
    x = torch.rand(2, 1, cfg["depth_size"], cfg["image_size"], cfg["image_size"],
                   generator=torch.Generator().manual_seed(SEED + 2)) * 2 - 1
    text = types.SimpleNamespace(input_ids=torch.ones(2, 6, dtype=torch.long),
                                 attention_mask=torch.ones(2, 6, dtype=torch.long))
    with torch.no_grad():
        _, image_latents, enc_image = clip(text, x, "cpu", return_latents=True)
        vt = clip.visual_transformer
        encoded = vt.encode(vt.to_patch_emb(x))  # CTViT.encode: pre-VQ tokens
    torch.save({"input": x, "latent": image_latents, "tokens": enc_image, "encoded": encoded},
               out / "ct_clip_golden.pt")

    # preprocessing: scripts/data_inference_nii.py CTReportDatasetinfer.nii_img_to_tensor
    data_mod = _load_file("ctclip_data_inference_nii", repo / "scripts/data_inference_nii.py")
    meta = pd.DataFrame({"VolumeName": [nifti.name], "RescaleSlope": [1.0], "RescaleIntercept": [0.0],
                         "XYSpacing": ["[0.8, 0.8]"], "ZSpacing": [1.6]})
    tensor = data_mod.CTReportDatasetinfer.nii_img_to_tensor(None, str(nifti), meta)  # (1, 240, 480, 480)
    pre = tensor[0].numpy()
    inside = np.argwhere(pre != -1.0)
    lo, hi = inside.min(0), inside.max(0) + 1
    np.savez_compressed(out / "ct_clip_preprocess.npz", region=pre[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]],
                        region_start=lo)
    return {"config": cfg, "preprocess": _stats(pre), "region": [lo.tolist(), hi.tolist()]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--m3d", type=Path, required=True, help="checkout of BAAI-DCAI/M3D")
    ap.add_argument("--radfm", type=Path, required=True, help="checkout of chaoyi-wu/RadFM")
    ap.add_argument("--ctclip", type=Path, required=True, help="checkout of ibrahimethemhamamci/CT-CLIP")
    ap.add_argument("--monai-path", type=Path, default=None, help="folder holding monai==1.3.0 (M3D's pin)")
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    if args.monai_path is not None:
        sys.path.insert(0, str(args.monai_path))
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer  # noqa: F401 - before the torchvision stub

    _stub_torchvision()

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    nifti = args.out / "phantom_oblique_lps.nii.gz"
    meta = {"originals": ORIGINALS, "torch": torch.__version__, "phantom": phantom_nifti(nifti)}
    meta["m3d_clip"] = make_m3d(args.m3d, args.out, nifti, torch)
    meta["radfm"] = make_radfm(args.radfm, args.out, nifti, torch)
    meta["ct_clip"] = make_ctclip(args.ctclip, args.out, nifti, torch)
    (args.out / "golden_native.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps({k: v for k, v in meta.items() if k != "originals"}, indent=1)[:3000])


if __name__ == "__main__":
    main()
