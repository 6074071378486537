"""Every head learns a synthetic task with planted signal (through train_probe)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from voxelfm.probes import train_probe
from voxelfm.probes.heads import (
    AttentivePoolingHead,
    MLPHead,
    PatchToVoxelDecoder,
    PositionalAttentionRegressor3D,
    decoder_sizes,
)


@pytest.mark.parametrize("head,feature", [("linear", "cls"), ("logistic", "cls"), ("mlp", "cls"),
                                          ("knn", "cls"), ("attentive", "patch"), ("attentive", "registers")])
def test_binary_heads_separate_planted_signal(strong_store, head, feature):
    store, labels = strong_store
    run = train_probe(store, labels, "y", task="binary", head=head, feature=feature, progress=False,
                      n_resamples=200, **({"epochs": 15} if head == "attentive" else {}))
    assert run.metrics["auroc"].value >= 0.95, run.metrics
    assert run.metrics["auroc"].method == "delong"
    test = run.predictions[run.predictions["split"] == "test"]
    assert len(test) == run.metrics["auroc"].n
    assert test["prob"].between(0, 1).all()


def test_knn_variants_and_selected_k(strong_store):
    store, labels = strong_store
    dino = train_probe(store, labels, "y", task="binary", head="knn", progress=False, n_resamples=0)
    skl = train_probe(store, labels, "y", task="binary", head="knn", variant="sklearn", progress=False,
                      n_resamples=0)
    fixed = train_probe(store, labels, "y", task="binary", head="knn", k=20, progress=False, n_resamples=0)
    assert str(dino.config["selection"]["k"]) in dino.config["selection"]["scores"]
    assert fixed.config["selection"]["k"] == 20
    assert skl.metrics["auroc"].value >= 0.9 and dino.metrics["auroc"].value >= 0.95


def test_cox_head_orders_risk(strong_store):
    store, labels = strong_store
    run = train_probe(store, labels, ["time", "event"], task="survival", head="cox", progress=False,
                      n_resamples=200, horizons=[100.0])
    assert run.metrics["c_index"].value >= 0.8
    assert run.metrics["c_index"].has_ci
    assert np.isfinite(run.metrics["td_auroc@100"].value)
    # higher risk = shorter survival: the risk correlates negatively with time
    test = run.predictions
    assert np.corrcoef(test["risk"], np.log(test["time"]))[0, 1] < -0.5


def test_localisation_error_falls_and_is_small(strong_store):
    store, labels = strong_store
    run = train_probe(store, labels, ["rel_z", "rel_y", "rel_x"], task="localisation", head="localisation",
                      epochs=20, progress=False, n_resamples=200)
    scores = [h["val_score"] for h in run.history]  # −mean distance on validation
    assert max(scores[-5:]) > scores[0] + 0.05  # error falls over epochs
    assert run.metrics["mean_distance"].value < 0.1  # planted marker token is found
    # mm = relative × extent (grid × 14 mm patches here)
    assert 0 < run.metrics["mean_distance_mm"].value < 0.1 * 3 * 14 * 2
    pred = run.predictions[["pred_z", "pred_y", "pred_x"]].to_numpy()
    assert ((pred >= 0) & (pred <= 1)).all()


def test_localisation_from_the_class_token_is_bounded_and_saved(strong_store, tmp_path):
    store, labels = strong_store
    run = train_probe(store, labels, ["rel_z", "rel_y", "rel_x"], task="localisation", head="mlp", epochs=3,
                      progress=False, n_resamples=0, output_dir=tmp_path / "loc_mlp")
    pred = run.predictions[["pred_z", "pred_y", "pred_x"]].to_numpy()
    assert ((pred > 0) & (pred < 1)).all()  # sigmoid outputs: relative coordinates
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "loc_mlp" / "weights.safetensors")
    assert "head.norm.mean" in weights and "norm.mean" not in weights


def _planted_segmentation_store(tmp_path):
    """40 scans of 3³ patch tokens; label = 1 (on the 4-voxel patches) where a token carries the
    marker direction. Returns ``(store, label table)``."""
    from voxelfm.inference.features import Features
    from voxelfm.inference.store import EmbeddingStore

    rng = np.random.default_rng(0)
    store = EmbeddingStore(tmp_path / "s")
    rows = []
    dim, grid, ps = 8, (3, 3, 3), 4
    marker = np.zeros(dim)
    marker[0] = 3.0
    for i in range(40):
        patch = rng.normal(size=(*grid, dim)) * 0.3
        on = rng.random(grid) < 0.3
        patch[on] += marker
        lab = np.kron(on.astype(np.int64), np.ones((ps, ps, ps), dtype=np.int64))  # model-input grid labels
        f = Features(cls=torch.zeros(dim), patch=torch.tensor(patch, dtype=torch.float32),
                     registers=torch.zeros(0, dim), patch_size_mm=(4.0, 4.0, 4.0),
                     record={"patch_size": ps, "final_shape": [g * ps for g in grid]})
        store.write(f"s{i}", f)
        np.save(tmp_path / f"s{i}.npy", lab)
        rows.append({"id": f"s{i}", "mask": str(tmp_path / f"s{i}.npy"),
                     "split": "train" if i < 28 else "val" if i < 34 else "test"})
    import pandas as pd

    return store, pd.DataFrame(rows)


def test_segmentation_decoder_learns_planted_pattern(tmp_path):
    """Label = 1 where the patch token carries the marker direction: Dice far above chance."""
    store, labels = _planted_segmentation_store(tmp_path)
    run = train_probe(store, labels, "mask", task="segmentation", label_space="input",
                      epochs=12, progress=False, n_resamples=200)
    # chance Dice for a random 30 % foreground prediction is ~0.3
    assert run.metrics["macro_dice"].value > 0.6, run.metrics
    assert run.history[-1]["val_score"] > run.history[0]["val_score"] + 0.3
    assert run.metrics["macro_dice"].has_ci
    assert run.config["num_classes"] == 2
    assert run.config["seg_shape_example"] == [12, 12, 12]


def test_segmentation_repeats_score_the_mean_dice_of_decoders_trained_with_consecutive_seeds(tmp_path):
    """repeats=2 = the decoders of seeds 4 and 5: per-scan Dice and macro Dice are their means."""
    store, labels = _planted_segmentation_store(tmp_path)
    opts = dict(task="segmentation", label_space="input", epochs=3, progress=False, n_resamples=0)
    one, two = (train_probe(store, labels, "mask", seed=s, **opts) for s in (4, 5))
    both = train_probe(store, labels, "mask", seed=4, repeats=2, output_dir=tmp_path / "rep", **opts)
    cols = [c for c in both.predictions.columns if c.startswith("dice:")]
    d1, d2, d12 = (r.predictions[cols].to_numpy(dtype=float) for r in (one, two, both))
    assert not np.allclose(d1, d2, equal_nan=True)  # the two seeds train different decoders
    np.testing.assert_allclose(d12, np.nanmean(np.stack([d1, d2]), axis=0), rtol=1e-12)
    test = both.predictions["split"] == "test"
    np.testing.assert_allclose(both.metrics["macro_dice"].value,
                               np.nanmean(np.nanmean(d12[test.to_numpy()], axis=0)), rtol=1e-12)
    assert len(both.history) == 2 * 3 and {h["repeat"] for h in both.history} == {1, 2}
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "rep" / "weights.safetensors")
    assert "0.classifier.weight" in weights and "1.classifier.weight" in weights
    with pytest.raises(Exception, match="repeats must be >= 1"):
        train_probe(store, labels, "mask", repeats=0, **opts)


def test_decoder_schedule_matches_reference():
    assert decoder_sizes((8, 8, 8), (112, 112, 112), 3) == [(43, 43, 43), (77, 77, 77), (112, 112, 112)]
    dec = PatchToVoxelDecoder(864, 118, hidden_dim=64)
    assert dec.channels == [64, 64, 64, 64]
    dec2 = PatchToVoxelDecoder(32, 3, hidden_dim=256, min_channels=64)
    assert dec2.channels == [256, 128, 64, 64]
    out = PatchToVoxelDecoder(16, 3, hidden_dim=16, min_channels=8)(torch.randn(2, 2, 3, 2, 16), target_shape=(7, 9, 5))
    assert out.shape == (2, 3, 7, 9, 5)
    # reference parameter names (state dicts of the reference decoder load)
    names = set(dec.state_dict())
    assert {"proj.weight", "layers.0.conv1.weight", "layers.0.norm1.weight", "layers.2.conv2.weight",
            "classifier.weight"} <= names
    assert "layers.2.norm1.weight" not in names  # final block: identity norm


def test_decoder_computes_the_reference_conv3d_pipeline():
    """The channels-last forward (1×1×1 convolutions as matmuls) is the reference's function:
    Conv3d proj → [block → trilinear] × steps → Conv3d classifier on channels-first tensors."""
    torch.manual_seed(0)
    dec = PatchToVoxelDecoder(24, 5, hidden_dim=16, min_channels=8).eval()
    x = torch.randn(2, 3, 2, 4, 24)
    target = (9, 7, 11)
    with torch.no_grad():
        ref = dec.proj(x.permute(0, 4, 1, 2, 3).contiguous())
        for layer, size in zip(dec.layers, decoder_sizes(ref.shape[2:], target, dec.num_steps)):
            ref = torch.nn.functional.interpolate(layer(ref), size=size, mode="trilinear", align_corners=False)
        ref = dec.classifier(ref)
        out = dec(x, target_shape=target)
    assert out.shape == ref.shape == (2, 5, *target)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_padding_masks_make_heads_ignore_padding():
    torch.manual_seed(0)
    head = AttentivePoolingHead(8, 2, hidden_dim=8, num_queries=3, num_heads=2, dropout=0.0, attn_dropout=0.0).eval()
    loc = PositionalAttentionRegressor3D(8, n_heads=2, hidden_dim=8).eval()
    x = torch.randn(1, 5, 8)
    coords = torch.rand(1, 5, 3)
    padded = torch.cat([x, 100 * torch.randn(1, 3, 8)], 1)
    pc = torch.cat([coords, torch.rand(1, 3, 3)], 1)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    assert torch.allclose(head(x), head(padded, mask), atol=1e-5)
    assert torch.allclose(loc(x, None, coords), loc(padded, mask, pc), atol=1e-5)
    # reference names: one query = the reference QFormer
    ref = AttentivePoolingHead(8, 1, hidden_dim=8, num_heads=2)
    assert set(ref.state_dict()) >= {"token_proj.weight", "queries", "attn.in_proj_weight", "classifier.1.weight"}
    assert MLPHead(8, 1, hidden_dim=4, standardize=False).state_dict().keys() >= {"mlp.0.weight", "mlp.3.weight"}


def test_multiclass_multilabel_regression(strong_store):
    store, labels = strong_store
    mc = train_probe(store, labels, "cls3", task="multiclass", head="logistic", progress=False, n_resamples=200)
    assert mc.metrics["macro_auroc"].value > 0.9
    assert set(mc.config["classes"]) == {"low", "mid", "high"}
    ml = train_probe(store, labels, ["a", "b"], task="multilabel", head="mlp", progress=False, n_resamples=200)
    assert ml.metrics["macro_auroc"].value > 0.9 and "auroc/a" in ml.metrics
    reg = train_probe(store, labels, "value", task="regression", head="linear", progress=False, n_resamples=200)
    test = reg.predictions[reg.predictions["split"] == "test"]
    from sklearn.metrics import mean_absolute_error

    # MAE reported in original units (targets were standardised on train statistics for training)
    assert reg.metrics["mae"].value == pytest.approx(mean_absolute_error(test["target"], test["pred"]))
    assert reg.metrics["mae"].value < 0.4 * labels["value"].std()
    assert reg.config["targets"]["std"][0] > 1.0


def test_localisation_eval_avoids_the_slow_fused_attention(monkeypatch):
    """Eval on the CPU goes through SDPA, not torch._native_multi_head_attention (2.4x slower for
    long padded token sets); the outputs are those of the fused path."""
    torch.manual_seed(0)
    head = PositionalAttentionRegressor3D(8, n_heads=2, hidden_dim=8).eval()
    x, coords = torch.randn(3, 20, 8), torch.rand(3, 20, 3)
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[1, 12:] = False
    with torch.no_grad():
        fused = head.attn(x, x, x, key_padding_mask=~mask, need_weights=False)[0]
        monkeypatch.setattr(torch, "_native_multi_head_attention",
                            lambda *a, **k: (_ for _ in ()).throw(AssertionError("fused path used")))
        w = head.token_weights(x, coords, mask)  # would raise on the fused path
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            plain = head.attn(x, x, x, key_padding_mask=~mask, need_weights=False)[0]
        finally:
            torch.backends.mha.set_fastpath_enabled(True)
    assert torch.backends.mha.get_fastpath_enabled()  # restored
    assert torch.allclose(plain[mask], fused[mask], atol=1e-5)
    assert torch.allclose(w.sum(1), torch.ones(3)) and float(w[1, 12:].abs().max()) == 0.0
