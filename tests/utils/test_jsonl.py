"""voxelfm.utils.jsonl: append-only logs that survive a write cut by a crash."""

from __future__ import annotations

import json

import pytest

from voxelfm.utils.jsonl import append_jsonl, read_jsonl, read_jsonl_folder


def test_round_trip_in_order(tmp_path):
    log = tmp_path / "index" / "a.jsonl"  # the folder is created
    recs = [{"id": "b", "n": 1}, {"id": "a", "n": 2, "text": "é ü"}, {"id": "b", "n": 3}]
    for r in recs:
        append_jsonl(log, r)
    assert read_jsonl(log) == recs
    assert log.read_text(encoding="utf-8").count("\n") == 3


def test_sort_keys(tmp_path):
    log = tmp_path / "a.jsonl"
    append_jsonl(log, {"z": 1, "a": 2}, sort_keys=True)
    assert log.read_text() == '{"a": 2, "z": 1}\n'


def test_cut_last_line_is_skipped(tmp_path):
    log = tmp_path / "a.jsonl"
    log.write_text('{"id": "a"}\n\n{"id": "b", "sta')
    assert read_jsonl(log) == [{"id": "a"}]


def test_append_after_a_cut_line_starts_a_new_line(tmp_path):
    # a crash cut the last record; the resumed run's first record must not be glued onto it
    log = tmp_path / "a.jsonl"
    log.write_text('{"id": "a"}\n{"id": "b", "sta')
    append_jsonl(log, {"id": "c"})
    append_jsonl(log, {"id": "d"})
    assert read_jsonl(log) == [{"id": "a"}, {"id": "c"}, {"id": "d"}]
    assert log.read_text().splitlines() == ['{"id": "a"}', '{"id": "b", "sta', '{"id": "c"}', '{"id": "d"}']


def test_cut_multibyte_character_and_non_objects_are_skipped(tmp_path):
    log = tmp_path / "a.jsonl"
    log.write_bytes(b'[1, 2]\n"text"\n{"id": 1}\n' + '{"id": "\u00e9'.encode()[:-1])
    assert read_jsonl(log) == [{"id": 1}]


def test_unencodable_record_writes_nothing(tmp_path):
    log = tmp_path / "a.jsonl"
    append_jsonl(log, {"id": "a"})
    with pytest.raises(TypeError):
        append_jsonl(log, {"id": object()})
    assert read_jsonl(log) == [{"id": "a"}]
    assert log.read_text() == '{"id": "a"}\n'


def test_missing_file(tmp_path):
    assert read_jsonl(tmp_path / "none.jsonl", missing_ok=True) == []
    with pytest.raises(FileNotFoundError):
        read_jsonl(tmp_path / "none.jsonl")


def test_folder_reads_matching_files_in_name_order(tmp_path):
    assert read_jsonl_folder(tmp_path / "missing") == []
    append_jsonl(tmp_path / "rank1.jsonl", {"id": "r1"})
    append_jsonl(tmp_path / "rank0.jsonl", {"id": "r0"})
    append_jsonl(tmp_path / "rank0.jsonl", {"id": "r0b"})
    (tmp_path / "notes.txt").write_text(json.dumps({"id": "x"}) + "\n")
    assert [r["id"] for r in read_jsonl_folder(tmp_path)] == ["r0", "r0b", "r1"]


def test_embedding_store_keeps_the_record_written_after_a_crash(tmp_path):
    from voxelfm.inference.store import EmbeddingStore

    store = EmbeddingStore(tmp_path)
    store.record_failure("a", error="boom")
    log = tmp_path / "index" / "main.jsonl"
    with open(log, "a") as fh:
        fh.write('{"id": "b", "status": "fa')  # killed mid-write
    EmbeddingStore(tmp_path).record_failure("c", error="later")
    recs = EmbeddingStore(tmp_path).records()
    assert list(recs) == ["a", "c"]
    assert recs["c"]["error"] == "later"


def test_volume_store_log_keeps_latest_record_order(tmp_path):
    from voxelfm.data.volume_store import _read_log

    log = tmp_path / "index" / "prepare.jsonl"
    for rec in ({"id": "a", "status": "failed"}, {"id": "b", "status": "ok"}, {"id": "a", "status": "ok"}):
        append_jsonl(log, rec, sort_keys=True)
    with open(log, "a") as fh:
        fh.write('{"id": "b", "status": "sk')
    out = _read_log(tmp_path)
    assert list(out) == ["b", "a"]  # ordered by each id's latest record
    assert out["a"]["status"] == "ok" and out["b"]["status"] == "ok"
