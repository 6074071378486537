"""Wall-time estimate of a batch (``voxelfm extract --dry-run``) and the analytic forward FLOPs."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest

from tests.inference.conftest import body_volume
from voxelfm.inference.calibrate import estimate_wall_time, forward_flops

pytestmark = pytest.mark.filterwarnings("ignore:.*no voxel spacing known")


def test_forward_flops_by_hand(tiny_model):
    # tiny: C 48, depth 2, patch 4, 4 registers, MLP ratio 4; 30 patches → n = 35 tokens
    C, n = 48, 35
    expected = 2 * 30 * 4 ** 3 * C + 2 * (24 * n * C * C + 4 * n * n * C)
    assert forward_flops(30, tiny_model) == pytest.approx(expected)


def test_estimate_scales_with_items_and_reads_only_a_sample(tiny_model, monkeypatch):
    import voxelfm.inference.batch as batch

    reads = []
    original = batch._ReadPreprocess.__getitem__

    def counting(self, i):
        reads.append(self.items[i].id)
        return original(self, i)

    monkeypatch.setattr(batch._ReadPreprocess, "__getitem__", counting)
    items = [(f"v{i}", body_volume((16, 20, 24), seed=i)) for i in range(10)]
    est = estimate_wall_time(tiny_model, items, sample=3)
    assert reads == ["v0", "v4", "v9"]  # spread over the manifest
    assert (est.items, est.sampled, est.tokens) == (10, 3, 4 * 5 * 6)
    assert est.gflops > 0 and est.forward_seconds > 0 and est.read_seconds > 0
    assert est.seconds == pytest.approx(10 * (est.forward_seconds + est.read_seconds))  # no workers
    est2 = estimate_wall_time(tiny_model, items * 1 + [(f"w{i}", items[0][1]) for i in range(10)], sample=2)
    assert est2.items == 20
    text = str(est)
    assert "10 volume(s)" in text and "expected wall time" in text and "Nothing was written" in text


def test_calibration_packs_the_linear_weights_once_as_the_batch_does(tiny_model):
    # regression: each calibration forward packed the weights anew (extract_batch packs once per run),
    # so on ViT-B the estimate of a cohort of small scans came out 1.6× the measured wall time
    import torch

    import voxelfm.models.layers.onednn_linear as il

    if not il._op_usable(torch.float32):
        pytest.skip("this PyTorch build has no usable oneDNN packed linears")
    items = [(f"v{i}", body_volume((16, 20, 24), seed=i)) for i in range(2)]
    with torch.profiler.profile() as prof:
        estimate_wall_time(tiny_model, items, sample=1)
    reorders = sum(e.count for e in prof.key_averages() if e.key == "mkldnn::_reorder_linear_weight")
    linears = sum(isinstance(m, torch.nn.Linear) for m in tiny_model.blocks.modules())
    assert reorders == linears


def test_unreadable_sample_is_a_clear_error(tiny_model, tmp_path):
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="none of the 1 sampled volumes could be read"):
        estimate_wall_time(tiny_model, [bad])


def test_cli_dry_run_prints_estimate_and_threads_and_writes_nothing(tmp_path, monkeypatch):
    from voxelfm.cli.main import main

    folder = tmp_path / "vols"
    folder.mkdir()
    for i in range(4):
        np.save(folder / f"v{i}.npy", body_volume((16, 20, 24), seed=i))
    out = tmp_path / "emb"
    monkeypatch.delenv("VOXELFM_THREADS", raising=False)
    with redirect_stdout(io.StringIO()) as so, redirect_stderr(io.StringIO()) as se:
        rc = main(["extract", "-i", str(folder), "-o", str(out), "--weights", "vit_tiny", "--dry-run",
                   "--threads", "1", "--workers", "0"])
    assert rc == 0 and not out.exists()
    assert "4 volume(s); calibration on 3" in so.getvalue() and "expected wall time" in so.getvalue()
    assert "voxelfm extract: 1 CPU thread(s)" in se.getvalue() and "from argument" in se.getvalue()
