"""End-to-end pre-training on a micro config: metrics, kill-and-resume equality, bad volumes,
exports loadable by ``voxelfm.load_backbone``, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from tests.ssl._helpers import MICRO, NpyStore, make_store
from voxelfm.ssl import pretrain
from voxelfm.ssl.checkpoint import list_checkpoints, load_checkpoint

pytestmark = pytest.mark.slow

METRIC_KEYS = {"step", "total", "dino_local", "dino_global", "koleo", "ibot", "lr", "wd", "momentum",
               "teacher_temp", "throughput", "tokens_per_s", "teacher_entropy", "ibot_teacher_entropy",
               "teacher_cls_std"}


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    make_store(root, n=6)
    (root / "vol05.npy").write_bytes(b"\x93NUMPY broken")  # an unreadable volume in the store
    return NpyStore(root)


@pytest.fixture(scope="module")
def straight_run(store, tmp_path_factory):
    run = tmp_path_factory.mktemp("straight")
    labels = run / "labels.csv"
    labels.write_text("id,y,split\n" + "".join(f"vol{i:02d},{i % 2},{'train' if i < 3 else 'test'}\n"
                                                for i in range(5)))
    path = pretrain(None, store, run, max_steps=4, overrides=MICRO + ["evaluation.knn_period_iterations=2",
                                                                      "evaluation.knn_k=2"],
                    knn_labels=labels, knn_target="y", show_progress=False)
    return run, path


def test_metrics_checkpoints_and_exports(straight_run):
    run, backbone_dir = straight_run
    rows = _metrics(run)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert METRIC_KEYS <= set(rows[0])
    assert all(torch.isfinite(torch.tensor(r["total"])) for r in rows)
    assert rows[0]["lr"] == 0.0 and rows[1]["lr"] == pytest.approx(0.00025)  # warm-up, 4 steps/epoch
    assert rows[0]["last_layer_lr"] == 0.0 and rows[3]["last_layer_lr"] == 0.0  # frozen in epoch 1
    assert [s for s, _ in list_checkpoints(run)] == [2, 4]  # every 2 steps, last 2 kept
    state = load_checkpoint(list_checkpoints(run)[-1][1])
    assert state["iteration"] == 4 and state["sampler"]["position"] == 4 * 2
    assert "dino_loss.center" in state["model"] and "ibot_patch_loss.center" in state["model"]
    assert torch.count_nonzero(state["model"]["dino_loss.center"]) > 0
    knn = [json.loads(line) for line in (run / "knn.jsonl").read_text().splitlines()]
    assert [k["step"] for k in knn] == [2, 4] and knn[0]["protocol"] == "train→val/test"
    assert 0.0 <= knn[-1]["knn_auroc/y"] <= 1.0 and knn[-1]["n"] == 5
    summary = json.loads((run / "run.json").read_text())
    assert summary["effective_batch_size"] == 2 and summary["steps_done"] == 4


def test_exports_load_with_load_backbone(straight_run):
    from voxelfm import load_backbone
    from voxelfm.ssl.export import teacher_backbone

    run, backbone_dir = straight_run
    teacher = teacher_backbone(run)
    x = torch.randn(1, 16, 16, 16)
    ref_out = teacher(x)["x_norm_clstoken"]
    for source in (backbone_dir, run / "eval" / "training_4", run / "eval" / "training_4" / "teacher_checkpoint.pth",
                   run):
        kwargs = {"config": run / "config.yaml"} if str(source).endswith(".pth") else {}
        model = load_backbone(source, **kwargs)
        assert torch.allclose(model(x)["x_norm_clstoken"], ref_out, atol=1e-6), source
    loaded = load_backbone(backbone_dir)
    assert loaded.preset.mean == -573.8 and loaded.preset.hu_window == (-1000.0, 1900.0)
    assert loaded.config.embed_dim == 48 and loaded.config.drop_path_rate == 0.0


def test_kill_and_resume_gives_identical_losses(store, straight_run, tmp_path):
    run_straight, _ = straight_run
    run = tmp_path / "resumed"
    ov = MICRO + ["evaluation.knn_period_iterations=2", "evaluation.knn_k=2"]  # same config as straight
    pretrain(None, store, run, max_steps=2, overrides=ov, show_progress=False, export=False)
    # simulate a kill after step 2's checkpoint: a stale line beyond the checkpoint is dropped on resume
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 2, "total": 123.0}) + "\n")
    pretrain(None, store, run, max_steps=4, overrides=ov, show_progress=False)
    a = [(r["step"], r["total"], r["ibot"], r["koleo"]) for r in _metrics(run_straight)]
    b = [(r["step"], r["total"], r["ibot"], r["koleo"]) for r in _metrics(run)]
    assert a == b  # bit-identical loss sequences
    sa = load_checkpoint(list_checkpoints(run_straight)[-1][1])["model"]
    sb = load_checkpoint(list_checkpoints(run)[-1][1])["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_cli_pretrain_and_user_errors(tmp_path, capsys):
    vs = pytest.importorskip("voxelfm.data.volume_store")
    from voxelfm.cli.main import main

    src = tmp_path / "volumes"
    make_store(src, n=3)
    store_dir = tmp_path / "store"
    vs.prepare_volumes([str(src)], store_dir, workers=1, min_side=8)  # tiny test volumes (default 56)
    out = tmp_path / "cli"
    code = main(["pretrain", "--config", "vit_base", "--data", str(store_dir), "--output", str(out),
                 "--max-steps", "1", *MICRO])
    assert code == 0
    assert len(_metrics(out)) == 1 and (out / "backbone" / "model.safetensors").is_file()
    assert main(["pretrain", "--data", str(store_dir), "--output", str(out), "optim.epoch=3"]) == 2
    assert "did you mean 'optim.epochs'" in capsys.readouterr().err


def test_resume_with_a_different_model_is_refused_and_keeps_the_run(store, straight_run):
    from voxelfm.errors import ConfigError

    run, _ = straight_run
    before = (run / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"dino.head_nlayers was \d+, the config now says 1; use a new --output"):
        pretrain(None, store, run, max_steps=6, overrides=MICRO + ["dino.head_nlayers=1"], show_progress=False)
    assert (run / "config.yaml").read_text() == before
    assert [s for s, _ in list_checkpoints(run)] == [2, 4]


def test_resume_with_other_crops_continues_and_says_so(store, straight_run, tmp_path, caplog):
    """Progressive resolution is allowed, but a resumed run whose crops changed is logged."""
    import logging
    import shutil

    run = tmp_path / "run"
    shutil.copytree(straight_run[0], run)
    with caplog.at_level(logging.WARNING, logger="voxelfm.ssl"):
        pretrain(None, store, run, max_steps=6, overrides=MICRO + ["crops.global_crops_size=[20,20,20]"],
                 show_progress=False)
    said = [r.getMessage() for r in caplog.records if "with other crops" in r.getMessage()]
    assert len(said) == 1 and "crops.global_crops_size 16 → [20, 20, 20]" in said[0], said
    assert [s for s, _ in list_checkpoints(run)][-1] == 6
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="voxelfm.ssl"):  # the same crops as a scalar: silent
        pretrain(None, store, run, max_steps=8, overrides=MICRO + ["crops.global_crops_size=20"],
                 show_progress=False)
    assert not [r for r in caplog.records if "with other crops" in r.getMessage()]
