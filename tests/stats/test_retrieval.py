"""Retrieval Recall@k: the protocol reproduces a literal loop of the reference algorithm; the
expected variant agrees within Monte-Carlo error; sanity values."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from voxelfm.stats import recall_at_k, retrieval_recall


def _reference_loop(emb, labels_map, uids, ks=(1, 5, 10), seed=4, n_neg=99):
    """Written from REFERENCE §4.7: labels by frequency, all ordered positive pairs, one generator,
    99 negatives per trial with rng.choice, stable ranking with the positive first; bootstrap
    over trials with a fresh default_rng(42) per CI, macro bootstrap over labels with one rng(42)."""
    e = emb.astype(np.float32)
    e = e / (np.linalg.norm(e, axis=1, keepdims=True) + np.float32(1e-8))
    sim = e @ e.T
    rng = np.random.default_rng(seed)
    counts = Counter(lab for ls in labels_map.values() for lab in ls)
    out = {}
    for label, _ in counts.most_common():
        pos = np.array([i for i, u in enumerate(uids) if label in labels_map[u]])
        neg = np.array([i for i, u in enumerate(uids) if label not in labels_map[u]])
        hits = {k: [] for k in ks}
        for q in pos:
            for p in pos[pos != q]:
                pool = np.concatenate([[p], rng.choice(neg, size=n_neg, replace=False)])
                order = np.argsort(-sim[q][pool], kind="stable")
                rank = int(np.where(order == 0)[0][0]) + 1
                for k in ks:
                    hits[k].append(1.0 if rank <= k else 0.0)
        res = {}
        for k in ks:
            arr = np.array(hits[k])
            brng = np.random.default_rng(42)
            means = [brng.choice(arr, size=len(arr), replace=True).mean() for _ in range(1000)]
            res[k] = (arr.mean(), np.percentile(means, 2.5), np.percentile(means, 97.5))
        out[label] = res
    mrng = np.random.default_rng(42)
    macro = {}
    for k in ks:
        scores = np.array([out[lab][k][0] for lab in out])
        means = [mrng.choice(scores, size=len(scores), replace=True).mean() for _ in range(1000)]
        macro[k] = (scores.mean(), np.percentile(means, 2.5), np.percentile(means, 97.5))
    return out, macro


def _data(seed=0, n=160, n_labels=3, signal=0.0):
    rng = np.random.default_rng(seed)
    labels = rng.random((n, n_labels)) < [0.08, 0.12, 0.1][:n_labels]
    protos = rng.normal(size=(n_labels, 16))
    emb = rng.normal(size=(n, 16)) + signal * labels.astype(float) @ protos
    return emb, labels


def test_protocol_reproduces_reference_loop_exactly():
    emb, labels = _data(0, signal=0.6)
    names = ["a", "b", "c"]
    uids = [f"u{i}" for i in range(len(emb))]
    labels_map = {u: [names[j] for j in np.flatnonzero(labels[i])] for i, u in enumerate(uids)}
    ref, ref_macro = _reference_loop(emb, labels_map, uids)
    res = retrieval_recall(emb, labels, label_names=names)
    assert res.labels == list(ref)  # frequency order
    for lab in ref:
        for k in (1, 5, 10):
            e = res.per_label[lab][k]
            assert (e.value, e.ci_low, e.ci_high) == pytest.approx(ref[lab][k], abs=1e-12)
            assert e.n == res.n_trials[lab]
    for k in (1, 5, 10):
        m = res.macro[k]
        assert (m.value, m.ci_low, m.ci_high) == pytest.approx(ref_macro[k], abs=1e-12)
    d = res.to_dict()
    assert d["macro"]["n_labels"] == 3 and "Recall@5_ci_lower" in d["per_label"][0]


def test_expected_agrees_with_protocol_within_monte_carlo_error():
    emb, labels = _data(1, n=220, signal=0.4)
    prot = retrieval_recall(emb, labels, method="protocol")
    exp = retrieval_recall(emb, labels, method="expected")
    assert prot.labels == exp.labels and prot.n_trials == exp.n_trials
    for lab in prot.labels:
        for k in (1, 5, 10):
            p = exp.per_label[lab][k].value
            # sampling noise of a mean of T hits (generous: trials are correlated)
            se = np.sqrt(max(p * (1 - p), 0.01) / prot.n_trials[lab])
            assert abs(prot.per_label[lab][k].value - p) < 5 * se + 0.01


def test_identical_positives_give_recall_one():
    rng = np.random.default_rng(0)
    n = 300
    cls = rng.integers(0, 4, n)  # class 3 = no label
    labels = np.stack([cls == j for j in range(3)], axis=1)
    protos = rng.normal(size=(3, 8))
    emb = rng.normal(size=(n, 8))
    emb[cls < 3] = protos[cls[cls < 3]]
    for method in ("protocol", "expected"):
        res = retrieval_recall(emb, labels, method=method, max_pairs=2000)
        for k in (1, 5, 10):
            assert res.macro[k].value == 1.0


def test_random_embeddings_near_chance():
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(400, 32))
    labels = rng.random((400, 3)) < 0.15
    res = retrieval_recall(emb, labels, method="expected")
    assert res.random_baseline == {1: 0.01, 5: 0.05, 10: 0.1}
    assert res.macro[1].value == pytest.approx(0.01, abs=0.004)
    assert res.macro[5].value == pytest.approx(0.05, abs=0.01)
    assert res.macro[10].value == pytest.approx(0.10, abs=0.015)


def test_max_pairs_and_skipped_labels():
    emb, labels = _data(2)
    res = retrieval_recall(emb, labels, max_pairs=50, ks=(1,))
    assert all(t == 50 for t in res.n_trials.values())
    labels2 = np.zeros((160, 2), bool)
    labels2[:20, 0] = True
    labels2[0, 1] = True  # one positive only
    with pytest.warns(RuntimeWarning, match="skipped 1 label"):
        res2 = retrieval_recall(emb, labels2, ks=(1,), method="expected")
    assert res2.labels == ["label_0"] and "label_1" in res2.skipped_labels
    small = np.zeros((40, 1), bool)
    small[:5] = True  # 35 negatives < 99: the error says which n_negatives would work
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="pass n_negatives <= 35"):
        retrieval_recall(emb[:40], small, ks=(1,))


def test_recall_at_k_generic():
    scores = np.array([[0.9, 0.8, 0.7, 0.1], [0.5, 0.5, 0.9, 0.2]])
    relevant = np.array([[0, 1, 1, 0], [0, 1, 0, 0]], bool)
    # query 1: top-2 = items 0, 1 → 1 of 2 relevant;
    # query 2: top-2 = item 2, then the tie 0/1 → the relevant item 1 wins
    assert recall_at_k(scores, relevant, 2).value == pytest.approx((0.5 + 1.0) / 2)
    assert recall_at_k(scores, relevant, 1).value == pytest.approx(0.0)


def test_expected_equals_exhaustive_average_over_negative_subsets():
    """The hypergeometric formula is the exact mean of the protocol over all negative draws."""
    from itertools import combinations

    rng = np.random.default_rng(7)
    n, n_neg_draw = 9, 3
    emb = np.round(rng.normal(size=(n, 2)), 1)  # coarse values → some tied similarities
    labels = np.zeros((n, 1), bool)
    labels[:3, 0] = True
    res = retrieval_recall(emb, labels, ks=(1, 2), n_negatives=n_neg_draw, method="expected")
    e = emb.astype(np.float32)
    e = e / (np.linalg.norm(e, axis=1, keepdims=True) + np.float32(1e-8))
    sim = e @ e.T
    pos, neg = np.arange(3), np.arange(3, n)
    hits = {1: [], 2: []}
    for q in pos:
        for p in pos[pos != q]:
            for k in (1, 2):
                h = [np.sum(sim[q, list(c)] > sim[q, p]) < k for c in combinations(neg, n_neg_draw)]
                hits[k].append(np.mean(h))
    for k in (1, 2):
        assert res.per_label["label_0"][k].value == pytest.approx(np.mean(hits[k]), abs=1e-12)
