"""extract_backbones: several backbones into one store each — options per family, resume, and
sharding over two gloo ranks with one process group for all backbones."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.inference.conftest import body_volume, randomised_tiny
from tests.inference.test_batch import _free_port
from voxelfm.inference.backbones import BackboneSpec, extract_backbones


def _setup(tmp_path: Path, n: int = 5) -> tuple[Path, list[BackboneSpec]]:
    from voxelfm.models import save_backbone

    folder = tmp_path / "vols"
    folder.mkdir()
    for i in range(n):
        np.save(folder / f"v{i}.npy", body_volume((16, 16, 16), seed=i))
    specs = []
    for i in range(2):
        save_backbone(randomised_tiny(10 + i), tmp_path / f"m{i}")
        specs.append(BackboneSpec(label=f"m{i}", family="voxelfm", weights=str(tmp_path / f"m{i}")))
    return folder, specs


def _rank_main(rank: int, world: int, port: int, folder: str, tmp: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), VOXELFM_NO_PROGRESS="1")
    torch.set_num_threads(1)
    specs = [BackboneSpec(label=f"m{i}", family="voxelfm", weights=str(Path(tmp) / f"m{i}")) for i in range(2)]
    out = extract_backbones(specs, [folder], Path(tmp) / "stores", show_progress=False, workers=0)
    import torch.distributed as dist

    Path(tmp, f"summary{rank}.json").write_text(json.dumps({
        "summaries": {k: v.to_dict() for k, v in out.items()}, "group_left": dist.is_initialized()}))


@pytest.mark.slow
def test_two_gloo_ranks_share_the_items_of_every_backbone(tmp_path):
    folder, _ = _setup(tmp_path)
    torch.multiprocessing.spawn(_rank_main, args=(2, _free_port(), str(folder), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        s = json.loads((tmp_path / f"summary{rank}.json").read_text())
        assert not s["group_left"]  # the one group made for all backbones is gone
        assert {k: (v["ok"], v["total"]) for k, v in s["summaries"].items()} == {"m0": (5, 5), "m1": (5, 5)}
    for label in ("m0", "m1"):
        ids = [{json.loads(x)["id"] for x in (tmp_path / "stores" / label / "index" / f"rank{r}.jsonl")
                .read_text().splitlines()} for r in (0, 1)]
        assert not ids[0] & ids[1] and ids[0] | ids[1] == {f"v{i}" for i in range(5)}


@pytest.mark.filterwarnings("ignore:random-init fake weights")
def test_vit_options_reach_voxelfm_only_and_resume(tmp_path, monkeypatch):
    from voxelfm.baselines.registry import FAMILY_MODULES
    from voxelfm.inference import EmbeddingStore

    monkeypatch.setitem(FAMILY_MODULES, "fake", "tests.baselines.fake_family:FAMILY")
    folder, specs = _setup(tmp_path, n=2)
    specs = [specs[0], BackboneSpec(label="fake", family="fake")]
    out = extract_backbones(specs, [folder], tmp_path / "stores", show_progress=False, workers=0,
                            max_patches=8, mode="chunked", spacing=(2.0, 1.0, 1.0))
    assert {k: v.ok for k, v in out.items()} == {"m0": 2, "fake": 2}
    vit = EmbeddingStore(tmp_path / "stores" / "m0").load("v0")
    assert np.prod(vit.record["token_grid"]) <= 8  # the token budget reached the ViT
    fake = EmbeddingStore(tmp_path / "stores" / "fake").load("v0")
    assert fake.record["final_shape"] == [16, 16, 16] and fake.record["spacing"] == [2.0, 1.0, 1.0]
    again = extract_backbones(specs, [folder], tmp_path / "stores", show_progress=False, workers=0,
                              max_patches=8, mode="chunked", spacing=(2.0, 1.0, 1.0))
    assert {k: (v.ok, v.skipped) for k, v in again.items()} == {"m0": (0, 2), "fake": (0, 2)}
    # a store made with other settings is refused, not mixed
    with pytest.raises(ValueError, match="different settings"):
        extract_backbones(specs[:1], [folder], tmp_path / "stores", show_progress=False, workers=0, max_patches=4)
