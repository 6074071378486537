"""clip2d: 2D medical CLIP towers slice by slice — preprocessing, output contract, and the released
checkpoint layouts (open_clip timm ViT, open_clip / OpenAI ViT, transformers CLIPModel, MedCLIP Swin)
against independent reference forwards on small random weights; hub cache and bad-input errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import voxelfm
from voxelfm.baselines.clip2d import MODELS, WINDOWS
from voxelfm.errors import CheckpointError, ConfigError

pytestmark = pytest.mark.filterwarnings("ignore:random-init clip2d")

S, PATCH, C, E, LAYERS, HEADS = 32, 8, 32, 16, 2, 2
VIT = dict(hidden_size=C, intermediate_size=2 * C, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
           image_size=S, patch_size=PATCH, projection_dim=E)
SWIN = dict(image_size=S, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4, projection_dim=E)
N_TOK = (S // PATCH) ** 2 + 1


def _volume(shape=(7, S, S), seed=0):
    return np.random.default_rng(seed).normal(-200, 500, shape).astype(np.float32)


def _images(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, S, S, generator=g)


# ------------------------------------------------------------------------- contract and preprocessing
@pytest.mark.parametrize("model", ["biomedclip", "pubmedclip", "pmc_clip", "medclip"])
def test_slice_tokens_cls_is_their_mean_and_strided_grid(model):
    tower = SWIN if model == "medclip" else VIT
    m = voxelfm.load_backbone("clip2d", weights=None, model=model, tower=tower, slice_stride=3, slice_batch=2)
    assert m.family == "clip2d" and m.embed_dim == E and m.patch_size == (3, S, S)
    vol = _volume((8, S, S))
    f = voxelfm.extract_features(m, vol)
    assert f.record["token_grid"] == [3, 1, 1] and tuple(f.patch.shape) == (3, 1, 1, E)
    torch.testing.assert_close(f.cls, f.patch.reshape(3, E).mean(0))
    assert m.slice_indices(8) == [1, 4, 6]  # centre slice of blocks [0,3), [3,6), [6,8)
    # each token is the tower's embedding of that slice, alone (batching changes nothing)
    pre = m.preprocess(vol)
    with torch.no_grad():
        single = m.embed_slices(pre.array[4:5])
    torch.testing.assert_close(f.patch[1, 0, 0], single[0], atol=1e-5, rtol=1e-5)
    assert f.registers.shape == (0, E)


def test_window_quantisation_and_geometry():
    m = voxelfm.load_backbone("clip2d", weights=None, model="biomedclip", tower=VIT, window="lung")
    vol = _volume((4, S, S))
    pre = m.preprocess(vol, spacing=(2.0, 0.7, 0.7))
    lo, hi = WINDOWS["lung"]
    expected = torch.round((torch.from_numpy(vol).clamp(lo, hi) - lo) / (hi - lo) * 255) / 255
    torch.testing.assert_close(pre.array, expected)  # image size = slice size: no resize
    assert pre.record["to_source"] == {"scale": [1.0, 1.0, 1.0], "offset": [0.0, 0.0, 0.0]}
    assert pre.record["spacing"] == [2.0, 0.7, 0.7] and pre.record["window"] == [lo, hi]
    assert [s["op"] for s in pre.record["steps"]][:2] == ["canonical_orientation", "hu_window"]
    # a non-square slice: shorter side resized to S, centre crop; a bright voxel maps back
    big = np.full((2, 40, 64), -1000.0, np.float32)
    big[:, 20, 33] = 1000.0
    p = voxelfm.load_backbone("clip2d", weights=None, model="pubmedclip", tower=VIT).preprocess(big)
    assert tuple(p.array.shape) == (2, S, S)
    i, j = np.unravel_index(int(p.array[0].argmax()), (S, S))
    sc, off = p.record["to_source"]["scale"], p.record["to_source"]["offset"]
    assert abs(sc[1] * i + off[1] - 20) <= 1.0 and abs(sc[2] * j + off[2] - 33) <= 1.0
    assert sc[1] == pytest.approx(40 / S) and p.record["spacing"][1] == pytest.approx(40 / S)


def test_bad_options_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown clip2d model"):
        voxelfm.load_backbone("clip2d", weights=None, model="nope")
    with pytest.raises(ConfigError, match="window"):
        voxelfm.load_backbone("clip2d", weights=None, window="brain")
    with pytest.raises(ConfigError, match="high > low"):
        voxelfm.load_backbone("clip2d", weights=None, window=[100, -100])
    m = voxelfm.load_backbone("clip2d", weights=None, tower=VIT)
    with pytest.raises(ValueError, match=r"expects \[B, D, 32, 32\]"):
        m(torch.zeros(1, 2, 16, 16))


# ------------------------------------------------------------------------- reference forwards
def _ln(x, sd, key, eps):
    return F.layer_norm(x, (x.shape[-1],), sd[key + ".weight"], sd[key + ".bias"], eps)


def _attention(x, wqkv, bqkv, wo, bo):
    b, n, c = x.shape
    q, k, v = F.linear(x, wqkv, bqkv).reshape(b, n, 3, HEADS, c // HEADS).permute(2, 0, 3, 1, 4)
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // HEADS), -1)
    return F.linear((a @ v).transpose(1, 2).reshape(b, n, c), wo, bo)


#: one transformer block's keys in each original layout
_OPEN_CLIP_BLOCK = {"ln1": "ln_1", "ln2": "ln_2", "qkv_w": "attn.in_proj_weight", "qkv_b": "attn.in_proj_bias",
                    "out": "attn.out_proj", "fc1": "mlp.c_fc", "fc2": "mlp.c_proj"}
_TIMM_BLOCK = {"ln1": "norm1", "ln2": "norm2", "qkv_w": "attn.qkv.weight", "qkv_b": "attn.qkv.bias",
               "out": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}


def _reference_blocks(x, w, prefix, names, eps):
    """Pre-norm transformer blocks (attention + GELU MLP) read from keys ``prefix{i}.<names>``."""
    for i in range(LAYERS):
        p = f"{prefix}{i}."
        n = {k: p + v for k, v in names.items()}
        x = x + _attention(_ln(x, w, n["ln1"], eps), w[n["qkv_w"]], w[n["qkv_b"]], w[n["out"] + ".weight"],
                           w[n["out"] + ".bias"])
        h = F.gelu(F.linear(_ln(x, w, n["ln2"], eps), w[n["fc1"] + ".weight"], w[n["fc1"] + ".bias"]))
        x = x + F.linear(h, w[n["fc2"] + ".weight"], w[n["fc2"] + ".bias"])
    return x


def _random_blocks(r, prefix, names):
    out = {}
    for i in range(LAYERS):
        n = {k: f"{prefix}{i}.{v}" for k, v in names.items()}
        out.update({n["ln1"] + ".weight": 1 + r(C), n["ln1"] + ".bias": r(C), n["ln2"] + ".weight": 1 + r(C),
                    n["ln2"] + ".bias": r(C), n["qkv_w"]: r(3 * C, C), n["qkv_b"]: r(3 * C),
                    n["out"] + ".weight": r(C, C), n["out"] + ".bias": r(C), n["fc1"] + ".weight": r(2 * C, C),
                    n["fc1"] + ".bias": r(2 * C), n["fc2"] + ".weight": r(C, 2 * C), n["fc2"] + ".bias": r(C)})
    return out


def _reference_open_clip_vit(sd, pixels):
    """open_clip ``VisionTransformer`` (OpenAI layout, GELU) written out from its keys."""
    v = {k[len("visual."):]: t for k, t in sd.items() if k.startswith("visual.")}
    x = F.conv2d(pixels, v["conv1.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    x = torch.cat([v["class_embedding"].expand(x.shape[0], 1, -1), x], 1) + v["positional_embedding"]
    x = _reference_blocks(_ln(x, v, "ln_pre", 1e-5), v, "transformer.resblocks.", _OPEN_CLIP_BLOCK, 1e-5)
    return _ln(x[:, 0], v, "ln_post", 1e-5) @ v["proj"]


def _reference_timm_vit(sd, pixels):
    """open_clip ``TimmModel`` over timm ``vit_base_patch16_224`` (token pool, linear head), from its keys."""
    t = {k[len("visual.trunk."):]: v for k, v in sd.items() if k.startswith("visual.trunk.")}
    x = F.conv2d(pixels, t["patch_embed.proj.weight"], t["patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([t["cls_token"].expand(x.shape[0], -1, -1), x], 1) + t["pos_embed"]
    x = _reference_blocks(x, t, "blocks.", _TIMM_BLOCK, 1e-6)
    return F.linear(_ln(x, t, "norm", 1e-6)[:, 0], sd["visual.head.proj.weight"])


def _random_open_clip_vit():
    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g) * 0.2  # noqa: E731
    sd = {"visual.class_embedding": r(C), "visual.positional_embedding": r(N_TOK, C),
          "visual.conv1.weight": r(C, 3, PATCH, PATCH), "visual.proj": r(C, E),
          "visual.ln_pre.weight": 1 + r(C), "visual.ln_pre.bias": r(C),
          "visual.ln_post.weight": 1 + r(C), "visual.ln_post.bias": r(C),
          # the text tower and the temperature are in the file too and must be left out
          "token_embedding.weight": r(10, C), "text_projection": r(C, E), "logit_scale": torch.tensor(4.6),
          "transformer.resblocks.0.ln_1.weight": r(C)}
    return sd | _random_blocks(r, "visual.transformer.resblocks.", _OPEN_CLIP_BLOCK)


def _random_open_clip_timm():
    g = torch.Generator().manual_seed(4)
    r = lambda *s: torch.randn(*s, generator=g) * 0.2  # noqa: E731
    t = "visual.trunk."
    sd = {t + "cls_token": r(1, 1, C), t + "pos_embed": r(1, N_TOK, C),
          t + "patch_embed.proj.weight": r(C, 3, PATCH, PATCH),
          t + "patch_embed.proj.bias": r(C), t + "norm.weight": 1 + r(C), t + "norm.bias": r(C),
          "visual.head.proj.weight": r(E, C), "text.transformer.embeddings.word_embeddings.weight": r(10, C),
          "text.proj.0.weight": r(E, C), "logit_scale": torch.tensor(4.6)}
    return sd | _random_blocks(r, t + "blocks.", _TIMM_BLOCK)


def _pixels(model, images):
    mean = torch.tensor(model.spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(model.spec.std).view(1, -1, 1, 1)
    return (images[:, None].expand(-1, 3, -1, -1) - mean) / std


def _open_clip_config(tmp_path, mean, width_cfg):
    cfg = {"model_cfg": {"embed_dim": E, "vision_cfg": {"image_size": S, **width_cfg}},
           "preprocess_cfg": {"mean": mean, "std": [0.3, 0.25, 0.2]}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("model,make,reference", [
    ("pmc_clip", _random_open_clip_vit, _reference_open_clip_vit),
    ("biomedclip", _random_open_clip_timm, _reference_timm_vit),
])
def test_open_clip_layouts_match_a_reference_forward(model, make, reference, tmp_path):
    sd = make()
    torch.save(sd, tmp_path / "open_clip_pytorch_model.bin")
    vision = {"layers": LAYERS, "width": C, "patch_size": PATCH, "head_width": C // HEADS, "mlp_ratio": 2.0} \
        if model == "pmc_clip" else {"timm_model_name": "vit_base_patch16_224", "timm_pool": "", "timm_proj": "linear"}
    _open_clip_config(tmp_path, [0.4, 0.5, 0.6], vision)
    tower = None if model == "pmc_clip" else {k: v for k, v in VIT.items() if k != "projection_dim"}
    m = voxelfm.load_backbone("clip2d", weights=tmp_path, model=model, tower=tower)
    # normalisation constants and (open_clip ViT) the architecture come from open_clip_config.json
    assert m.spec.mean == (0.4, 0.5, 0.6) and m.spec.std == (0.3, 0.25, 0.2) and m.embed_dim == E
    assert m.source["unexpected_keys"] == [] and m.source["dropped_keys"] > 0
    images = _images()
    with torch.no_grad():
        ours = m.embed_slices(images)
        ref = reference(sd, _pixels(m, images))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_transformers_clip_checkpoint_and_its_config_files(tmp_path):
    """PubMedCLIP is a transformers CLIPModel: the original class is the oracle; config.json and
    preprocessor_config.json next to the weights set the architecture and normalisation."""
    from transformers import CLIPConfig, CLIPModel

    vision = {k: v for k, v in VIT.items() if k != "projection_dim"} | {"hidden_act": "quick_gelu"}
    cfg = CLIPConfig(vision_config=vision,
                     text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                  "num_attention_heads": 2, "vocab_size": 50},
                     projection_dim=E)
    torch.manual_seed(5)
    original = CLIPModel(cfg).eval()
    torch.save(original.state_dict(), tmp_path / "pytorch_model.bin")
    cfg.to_json_file(tmp_path / "config.json")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2, 0.3],
                                                                   "image_std": [0.5, 0.5, 0.5]}))
    m = voxelfm.load_backbone("clip2d", weights=tmp_path / "pytorch_model.bin", model="pubmedclip")
    assert m.spec.tower["hidden_act"] == "quick_gelu" and m.spec.image_size == S and m.spec.mean == (0.1, 0.2, 0.3)
    images = _images()
    with torch.no_grad():
        ref = original.get_image_features(pixel_values=_pixels(m, images))
        ref = getattr(ref, "pooler_output", ref)
        torch.testing.assert_close(m.embed_slices(images), ref, rtol=1e-4, atol=1e-5)


_V4 = ((".attention.q_proj.", ".attention.self.query."), (".attention.k_proj.", ".attention.self.key."),
       (".attention.v_proj.", ".attention.self.value."), (".attention.o_proj.", ".attention.output.dense."),
       (".attention.relative_position_bias.relative_position_bias_table",
        ".attention.self.relative_position_bias_table"),
       (".mlp.fc1.", ".intermediate.dense."), (".mlp.fc2.", ".output.dense."))


def test_medclip_checkpoint_in_its_transformers_4_layout(tmp_path):
    """MedCLIP-ViT saved ``vision_model.model.*`` (a transformers-4 SwinModel) + ``projection_head``;
    the original modules (SwinModel + bias-free Linear) are the oracle."""
    from transformers import SwinConfig, SwinModel

    torch.manual_seed(6)
    swin = SwinModel(SwinConfig(**{k: v for k, v in SWIN.items() if k != "projection_dim"})).eval()
    proj = torch.nn.Linear(swin.num_features, E, bias=False)
    sd = {"text_model.model.embeddings.word_embeddings.weight": torch.randn(10, 4), "logit_scale": torch.tensor(3.0),
          "vision_model.projection_head.weight": proj.weight.detach().clone()}
    for k, v in swin.state_dict().items():
        for new, old in _V4:
            k = k.replace(new, old)
        sd["vision_model.model." + k] = v
    torch.save(sd, tmp_path / "pytorch_model.bin")
    m = voxelfm.load_backbone("clip2d", weights=tmp_path, model="medclip", tower=SWIN)
    assert m.source["unexpected_keys"] == []
    images = _images()
    with torch.no_grad():
        x = ((images[:, None] - MODELS["medclip"].mean[0]) / MODELS["medclip"].std[0]).expand(-1, 3, -1, -1)
        ref = proj(swin(pixel_values=x).pooler_output)
        torch.testing.assert_close(m.embed_slices(images), ref, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------- hub cache and bad files
def test_hub_repo_id_from_the_local_cache_and_one_line_when_missing(tmp_path, monkeypatch):
    repo = MODELS["pmc_clip"].hub_repo
    snap = tmp_path / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    sd = _random_open_clip_vit()
    torch.save(sd, snap / "open_clip_pytorch_model.bin")
    _open_clip_config(snap, [0.4, 0.5, 0.6], {"layers": LAYERS, "width": C, "patch_size": PATCH,
                                              "head_width": C // HEADS, "mlp_ratio": 2.0})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    m = voxelfm.load_backbone("clip2d", weights=repo)  # the model is inferred from the repo id
    assert m.spec.name == "pmc_clip" and m.source["path"].endswith("open_clip_pytorch_model.bin")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(CheckpointError) as err:
        voxelfm.load_backbone("clip2d", weights=MODELS["biomedclip"].hub_repo)
    msg = str(err.value)
    assert "\n" not in msg and "download" in msg and "open_clip_pytorch_model.bin" in msg


def test_another_models_checkpoint_and_garbage_are_one_line_errors(tmp_path):
    torch.save(_random_open_clip_timm(), tmp_path / "biomed.bin")
    with pytest.raises(CheckpointError, match="not a pubmedclip checkpoint"):
        voxelfm.load_backbone("clip2d", weights=tmp_path / "biomed.bin", model="pubmedclip", tower=VIT)
    # right layout, wrong size: the missing / mismatched keys are listed
    with pytest.raises(CheckpointError, match="shape mismatch"):
        voxelfm.load_backbone("clip2d", weights=tmp_path / "biomed.bin", model="biomedclip",
                              tower={**VIT, "hidden_size": 2 * C})
    (tmp_path / "trunc.bin").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(CheckpointError):
        voxelfm.load_backbone("clip2d", weights=tmp_path / "trunc.bin", model="biomedclip", tower=VIT)


def test_extract_cli_with_clip2d(tmp_path, capsys):
    from voxelfm.cli.main import main
    from voxelfm.inference import EmbeddingStore

    for i in range(2):
        np.save(tmp_path / f"v{i}.npy", _volume((5, 40, 40), seed=i))
    out = tmp_path / "store"
    assert main(["extract", "-i", str(tmp_path / "v0.npy"), str(tmp_path / "v1.npy"), "-o", str(out),
                 "--backbone", "clip2d", "--backbone-option", "model=pubmedclip", "--backbone-option",
                 f"tower={json.dumps(VIT)}", "--backbone-option", "slice_stride=2", "--workers", "0",
                 "--spacing", "2", "1", "1"]) == 0
    capsys.readouterr()
    store = EmbeddingStore(out)
    f = store.load("v0")
    assert tuple(f.patch.shape) == (3, 1, 1, E) and f.record["preset"] == "clip2d"
    assert f.patch_size_mm == pytest.approx((4.0, 40.0, 40.0))  # stride 2 x 2 mm; 32 px of 1.25 mm
