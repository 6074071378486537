"""Batch extraction: failures recorded, resumable (exactly once), retry, .pth layout, safe ids,
torchrun-style sharding, CLI errors."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.inference.conftest import body_volume, randomised_tiny
from voxelfm.inference import EmbeddingStore, extract_batch

N_GOOD = 5
pytestmark = pytest.mark.filterwarnings("ignore:.*no voxel spacing known")


def _folder(tmp_path: Path, n: int = N_GOOD, shape=(16, 20, 24), bad: bool = True) -> Path:
    folder = tmp_path / "vols"
    folder.mkdir()
    for i in range(n):
        np.save(folder / f"v{i}.npy", body_volume(shape, seed=i))
    if bad:
        (folder / "bad.npy").write_bytes(b"this is not a numpy file")
    return folder


def _log_records(out: Path) -> list[dict]:
    recs = []
    for log in sorted((out / "index").glob("*.jsonl")):
        recs += [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return recs


def _tmp_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def _ok_once(out: Path, ids) -> None:
    oks = [r["id"] for r in _log_records(out) if r["status"] == "ok"]
    assert sorted(oks) == sorted(ids), oks  # every id logged ok exactly once
    assert not _tmp_files(out)


def test_failure_is_recorded_and_the_run_goes_on(tiny_model, tmp_path):
    folder = _folder(tmp_path)
    out = tmp_path / "emb"
    s = extract_batch(tiny_model, [folder], out)
    assert (s.ok, s.failed, s.skipped, s.total) == (N_GOOD, 1, 0, N_GOOD + 1) and s.failed_ids == ["bad"]
    store = EmbeddingStore(out)
    assert sorted(store.ids) == [f"v{i}" for i in range(N_GOOD)]
    assert store.status("bad") == "failed"
    import csv

    rows = {r["id"]: r for r in csv.DictReader(open(out / "index.csv"))}
    assert rows["bad"]["status"] == "failed" and rows["bad"]["error"]
    assert rows["v0"]["status"] == "ok" and rows["v0"]["grid"] == "4x5x6"
    f = store.load("v1")
    assert f.patch.shape == (4, 5, 6, 48) and f.record["preset"]["name"] == "default"
    assert f.record["source"]["format"] == "npy" and "read_preprocess_seconds" in f.record
    assert "voxelfm extract: 5 ok, 1 failed, 0 skipped of 6" in str(s)
    _ok_once(out, [f"v{i}" for i in range(N_GOOD)])


def test_a_single_path_is_one_input_not_its_characters(tiny_model, tmp_path):
    folder = _folder(tmp_path, n=2, bad=False)
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,path\n" + "".join(f"c{i},vols/v{i}.npy\n" for i in range(2)))
    for single in (str(manifest), manifest, folder):
        out = tmp_path / f"emb-{type(single).__name__}-{Path(single).name}"
        s = extract_batch(tiny_model, single, out)
        assert s.ok == 2 and s.total == 2


def test_rerun_skips_and_retry_failed(tiny_model, tmp_path):
    folder = _folder(tmp_path)
    out = tmp_path / "emb"
    extract_batch(tiny_model, [folder], out)
    s = extract_batch(tiny_model, [folder], out, workers=1)
    assert (s.ok, s.failed, s.skipped) == (0, 0, N_GOOD + 1)
    np.save(folder / "bad.npy", body_volume((16, 20, 24), seed=99))  # fix the broken input
    assert extract_batch(tiny_model, [folder], out).skipped == N_GOOD + 1  # failures not retried by default
    s = extract_batch(tiny_model, [folder], out, retry_failed=True)
    assert (s.ok, s.failed, s.skipped) == (1, 0, N_GOOD)
    assert EmbeddingStore(out).status("bad") == "ok"
    _ok_once(out, [f"v{i}" for i in range(N_GOOD)] + ["bad"])


def test_interrupted_run_resumes_with_every_id_once(tmp_path):
    folder = _folder(tmp_path, bad=False)
    out = tmp_path / "emb"
    model = randomised_tiny(5)
    calls = {"n": 0}
    forward = model.forward

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the user pressed ctrl-c during the third volume
        return forward(*a, **k)

    model.forward = flaky
    with pytest.raises(KeyboardInterrupt):
        extract_batch(model, [folder], out, workers=1)
    del model.forward
    assert len(EmbeddingStore(out).ids) == 2 and not _tmp_files(out)
    # the index table is written on an interrupt too (regression: only at the end of a full run)
    assert (out / "index.csv").read_text().count(",ok,") == 2
    # a SIGKILL during a write leaves a temp file next to the target; the resume removes it
    stale = out / "embeddings" / ".v4.safetensors.x1y2.tmp"
    stale.write_bytes(b"partial")
    s = extract_batch(model, [folder], out)
    assert (s.ok, s.skipped) == (N_GOOD - 2, 2)
    _ok_once(out, [f"v{i}" for i in range(N_GOOD)])


@pytest.mark.slow
def test_killed_cli_run_resumes(tmp_path):
    folder = _folder(tmp_path, n=12, shape=(40, 40, 40), bad=False)
    from voxelfm.models import save_backbone

    save_backbone(randomised_tiny(6), tmp_path / "model")
    out = tmp_path / "emb"
    cmd = [sys.executable, "-m", "voxelfm", "extract", "-i", str(folder), "-o", str(out),
           "--weights", str(tmp_path / "model"), "--workers", "0"]
    env = {**os.environ, "VOXELFM_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = out / "index" / "main.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.005)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done_before = len(EmbeddingStore(out).ids)
    print(f"killed={killed} after {done_before} of 12 volumes")
    assert done_before >= 2 if killed else done_before == 12
    from voxelfm.cli.main import main

    with redirect_stdout(io.StringIO()) as buf:
        rc = main(cmd[3:])
    assert rc == 0 and f"{12 - done_before} ok, 0 failed, {done_before} skipped of 12" in buf.getvalue()
    _ok_once(out, [f"v{i}" for i in range(12)])


def test_pth_format_is_the_reference_layout(tiny_model, tmp_path):
    folder = _folder(tmp_path, n=2, bad=False)
    out = tmp_path / "pth"
    extract_batch(tiny_model, [folder], out, format="pth")
    d = torch.load(out / "embeddings" / "v0.pth", weights_only=True)
    assert set(d) == {"cls", "patch"} and d["cls"].shape == (1, 48) and d["patch"].shape == (4, 5, 6, 48)
    assert not list((out / "embeddings").glob("*.safetensors"))
    store = EmbeddingStore(out)
    assert sorted(store.ids) == ["v0", "v1"] and store.matrix(feature="cls").shape == (2, 48)
    assert extract_batch(tiny_model, [folder], out, format="pth").skipped == 2
    both = tmp_path / "both"
    extract_batch(tiny_model, [folder], both, format="both")
    ref = torch.load(both / "embeddings" / "v1.pth", weights_only=True)
    assert torch.equal(ref["cls"][0], EmbeddingStore(both).load("v1").cls)
    assert torch.equal(ref["patch"], EmbeddingStore(both).load_tensor("v1", "patch"))


def test_unsafe_ids_cannot_escape_out(tiny_model, tmp_path):
    out = tmp_path / "a" / "emb"
    vol = body_volume((16, 16, 16))
    ids = ["../../escape", "/etc/passwd", "a/b\\c", "..", "ok id"]
    s = extract_batch(tiny_model, [(i, vol) for i in ids], out)
    assert s.ok == len(ids)
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert all(out in p.parents for p in files)
    assert len(list((out / "embeddings").glob("*.safetensors"))) == len(ids)
    assert sorted(EmbeddingStore(out).ids) == sorted(ids)


def test_mixing_settings_in_one_store_is_refused(tiny_model, tmp_path):
    folder = _folder(tmp_path, n=1, bad=False)
    extract_batch(tiny_model, [folder], tmp_path / "emb")
    with pytest.raises(ValueError, match="different settings"):
        extract_batch(tiny_model, [folder], tmp_path / "emb", preset="paper")


def test_every_volume_is_read_once_with_workers(tiny_model, tmp_path, monkeypatch):
    # regression: the progress bar (tqdm.auto) iterated the DataLoader twice, so a second set of
    # workers read and preprocessed the first volumes again
    import voxelfm.inference.batch as batch

    folder = _folder(tmp_path, n=3, bad=False)
    log = tmp_path / "reads.txt"
    real = batch.preprocess_volume

    def logged(*a, **k):
        with open(log, "a") as fh:  # workers are forked: a file sees every process
            fh.write(f"{os.getpid()}\n")
        return real(*a, **k)

    monkeypatch.setattr(batch, "preprocess_volume", logged)
    s = extract_batch(tiny_model, [folder], tmp_path / "emb", workers=2, show_progress=True)
    assert s.ok == 3 and len(log.read_text().split()) == 3


def test_progress_counts_finished_volumes(tiny_model, tmp_path, monkeypatch):
    # regression: the bar counted a volume when it arrived from the reader, before its forward, so
    # a log showed "2/2" while the last volume was still being embedded and the rate was too high
    import voxelfm.inference.batch as batch

    events: list[str] = []

    class Bar:
        def update(self, n: int) -> None:
            events.append("done")

        def close(self) -> None:
            events.append("close")

    real = batch.extract_preprocessed

    def forward(*a, **k):
        out = real(*a, **k)
        events.append("embedded")
        return out

    monkeypatch.setattr(batch, "progress", lambda **k: Bar())
    monkeypatch.setattr(batch, "extract_preprocessed", forward)
    s = extract_batch(tiny_model, [_folder(tmp_path, n=2, bad=True)], tmp_path / "emb", workers=0)
    assert s.ok == 2 and s.failed == 1
    # each good volume is counted after its forward; an unreadable one is counted when it fails
    assert events[-1] == "close" and events.count("done") == s.ok + s.failed
    for i, e in enumerate(events):
        if e == "embedded":
            assert events[i + 1] == "done"


def test_store_refuses_other_weights_or_dtype(tiny_model, tmp_path):
    # regression: only the architecture was compared, so two checkpoints of one architecture (or
    # two random inits) were mixed silently in one store
    folder = _folder(tmp_path, n=1, bad=False)
    out = tmp_path / "emb"
    extract_batch(tiny_model, [folder], out)
    with pytest.raises(ValueError, match=r"different settings \(weights\)"):
        extract_batch(randomised_tiny(1), [folder], out)
    with pytest.raises(ValueError, match=r"different settings \(dtype\)"):
        extract_batch(tiny_model, [folder], out, dtype="bf16")
    assert extract_batch(randomised_tiny(0), [folder], out).skipped == 1  # same weights: resumes
    # a store written before weights/dtype were recorded is still accepted
    settings = json.loads((out / "extraction.json").read_text())
    del settings["weights"], settings["dtype"]
    (out / "extraction.json").write_text(json.dumps(settings))
    assert extract_batch(tiny_model, [folder], out).skipped == 1


def test_bad_options_are_usage_errors_before_any_item_is_read(tiny_model, tmp_path):
    # regression: --window 0 failed every item one by one (exit 1) instead of a usage error
    folder = _folder(tmp_path, n=1, bad=False)
    out = tmp_path / "emb"
    for kw, match in [(dict(window=0), "window"), (dict(window="abc"), "window"), (dict(mode="fast"), "mode"),
                      (dict(overlap=1.0), "overlap"), (dict(dtype="fp8"), "dtype"),
                      (dict(memory_budget_gb=0), "memory_budget_gb"), (dict(max_patches=0), "max_patches"),
                      (dict(spacing=(1, 0, 1)), "spacing")]:
        with pytest.raises(ValueError, match=match):
            extract_batch(tiny_model, [folder], out, **kw)
        assert not out.exists()
    out.write_text("a file")  # regression: FileExistsError traceback from mkdir
    with pytest.raises(ValueError, match="not a folder"):
        extract_batch(tiny_model, [folder], out)


def test_spacing_applies_to_numpy_inputs(tiny_model, tmp_path):
    folder = _folder(tmp_path, n=1, bad=False)
    out = tmp_path / "emb"
    extract_batch(tiny_model, [folder], out, spacing=(2.0, 1.0, 1.0))
    rec = EmbeddingStore(out).load("v0").record
    assert rec["input_spacing"] == [2.0, 1.0, 1.0] and rec["resample"]["shape"] == [32, 20, 24]


def test_cli_earlier_failures_keep_exit_status_1(tmp_path):
    # regression: a re-run that skipped earlier failures said "0 failed" and exited 0
    from voxelfm.cli.main import main
    from voxelfm.models import save_backbone

    folder = _folder(tmp_path, n=1)
    save_backbone(randomised_tiny(8), tmp_path / "model")
    cmd = ["extract", "-i", str(folder), "-o", str(tmp_path / "emb"), "--weights", str(tmp_path / "model"),
           "--workers", "0", "--spacing", "2", "1", "1"]
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        assert main(cmd) == 1
    with redirect_stdout(io.StringIO()) as out, redirect_stderr(io.StringIO()) as err:
        assert main(cmd) == 1
    assert "0 ok, 0 failed, 2 skipped (1 of them failed before and were not retried" in out.getvalue()
    assert "1 item(s) without embeddings" in err.getvalue()
    assert EmbeddingStore(tmp_path / "emb").load("v0").record["input_spacing"] == [2.0, 1.0, 1.0]


def test_cli_bf16_on_the_cpu_names_its_kernels(tmp_path, monkeypatch):
    """``--dtype bf16`` / ``fp32`` on the CPU says whether voxelfm's compiled kernels run, or why not."""
    import voxelfm.models.kernels.loader as loader
    from voxelfm.cli.main import main
    from voxelfm.models import save_backbone

    monkeypatch.setattr(loader, "_state", {})
    monkeypatch.setenv("VOXELFM_CPU_KERNELS", "0")
    np.save(tmp_path / "v.npy", body_volume((16, 16, 16)))
    save_backbone(randomised_tiny(8), tmp_path / "model")
    cmd = ["extract", "-i", str(tmp_path / "v.npy"), "-o", str(tmp_path / "emb"), "--weights", str(tmp_path / "model"),
           "--workers", "0", "--device", "cpu", "--dtype", "bf16"]
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()) as err:
        assert main(cmd) == 0
    assert ("bf16 CPU kernels (built once per machine, ~5–8 s each): bf16_attention disabled by VOXELFM_CPU_KERNELS, "
            "rope disabled by VOXELFM_CPU_KERNELS") in err.getvalue()
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()) as err:
        assert main([*cmd[:-1], "fp32", "-o", str(tmp_path / "emb32")]) == 0
    assert ("fp32 CPU kernels (built once per machine, ~5–8 s each): fp32_attention disabled by VOXELFM_CPU_KERNELS, "
            "rope disabled by VOXELFM_CPU_KERNELS") in err.getvalue()
    assert "bf16_attention" not in err.getvalue()


def test_cli_item_failures_exit_0_under_torchrun(tmp_path, monkeypatch):
    # torchrun turns a non-zero exit into a crash report with a traceback; item failures are in
    # the summary and index.csv instead
    import voxelfm.inference.batch as batch
    from voxelfm.cli.main import main
    from voxelfm.inference import BatchSummary

    from voxelfm.models import save_backbone

    monkeypatch.setattr(batch, "extract_batch", lambda *a, **k: BatchSummary(ok=3, failed=1, total=4))
    np.save(tmp_path / "v.npy", body_volume((16, 16, 16)))
    save_backbone(randomised_tiny(8), tmp_path / "model")
    cmd = ["extract", "-i", str(tmp_path / "v.npy"), "-o", str(tmp_path / "emb"), "--weights", str(tmp_path / "model")]
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        assert main(cmd) == 1
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert main(cmd) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, folder: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), VOXELFM_NO_PROGRESS="1")
    torch.set_num_threads(1)
    s = extract_batch(randomised_tiny(7), [folder], out, workers=0)
    Path(out, f"summary{rank}.json").write_text(json.dumps(s.to_dict()))


@pytest.mark.slow
def test_two_gloo_ranks_share_the_items(tmp_path):
    folder = _folder(tmp_path, n=6, bad=True)
    out = tmp_path / "emb"
    torch.multiprocessing.spawn(_rank_main, args=(2, _free_port(), str(folder), str(out)), nprocs=2, join=True)
    s0 = json.loads((out / "summary0.json").read_text())
    assert (s0["ok"], s0["failed"], s0["total"]) == (6, 1, 7)  # summed over ranks
    assert sorted(p.name for p in (out / "index").glob("*.jsonl")) == ["rank0.jsonl", "rank1.jsonl"]
    per_rank = [{json.loads(x)["id"] for x in (out / "index" / f"rank{r}.jsonl").read_text().splitlines()}
                for r in (0, 1)]
    assert not per_rank[0] & per_rank[1] and len(per_rank[0]) + len(per_rank[1]) == 7
    _ok_once(out, [f"v{i}" for i in range(6)])
    import csv

    assert len(list(csv.DictReader(open(out / "index.csv")))) == 7


def test_cli_bad_path_is_one_line_exit_2(tmp_path):
    from voxelfm.cli.main import main

    err = io.StringIO()
    with redirect_stderr(err):
        rc = main(["extract", "-i", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "o"),
                   "--weights", "vit_tiny"])
    assert rc == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("voxelfm extract: error:") and "missing.nii.gz" in lines[0]


def test_cli_end_to_end_with_workers(tmp_path):
    from voxelfm.cli.main import main
    from voxelfm.models import save_backbone

    folder = _folder(tmp_path, n=3)
    save_backbone(randomised_tiny(8), tmp_path / "model")
    out = tmp_path / "emb"
    with redirect_stdout(io.StringIO()) as buf:
        rc = main(["extract", "-i", str(folder), "-o", str(out), "--weights", str(tmp_path / "model"),
                   "--workers", "1", "--format", "both", "--preset", "paper", "--max-patches", "20"])
    assert rc == 1  # one input failed
    assert buf.getvalue().strip().startswith("voxelfm extract: 3 ok, 1 failed, 0 skipped of 4")
    f = EmbeddingStore(out).load("v0")
    assert f.record["budget"]["max_patches"] == 20 and int(np.prod(f.grid)) <= 20
    assert (out / "embeddings" / "v0.pth").exists()


def test_paths_and_id_array_pairs_mix(tiny_model, tmp_path):
    folder = _folder(tmp_path, n=2, bad=False)
    arr = body_volume((16, 20, 24), seed=9)
    out = tmp_path / "emb"
    s = extract_batch(tiny_model, [folder / "v0.npy", ("mem", arr), str(folder / "v1.npy")], out)
    assert (s.ok, s.failed, s.total) == (3, 0, 3)
    assert sorted(EmbeddingStore(out).ids) == ["mem", "v0", "v1"]
    assert 0.0 < s.model_busy <= 1.0 and s.model_seconds > 0
    assert "model busy" in str(s) and s.to_dict()["model_busy"] == pytest.approx(s.model_busy, abs=1e-4)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((8, 8, 8), np.float32), r"batch item 1 \(ndarray: shape \(8, 8, 8\)\).*pass \(id, array\)"),
    (("a", "b", "c", "d"), r"batch item 1 \(tuple"),
])
def test_unusable_batch_item_names_its_position_and_the_fix(tiny_model, tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        extract_batch(tiny_model, [("ok", np.zeros((8, 8, 8), np.float32)), bad], tmp_path / "emb")


def test_duplicate_id_from_a_path_and_a_pair(tiny_model, tmp_path):
    folder = _folder(tmp_path, n=1, bad=False)
    with pytest.raises(ValueError, match="duplicate id 'v0'.*distinct ids"):
        extract_batch(tiny_model, [folder / "v0.npy", ("v0", body_volume((16, 20, 24)))], tmp_path / "emb")
