"""The training loop: train-only noise, shuffled epochs, exact gradient accumulation, model selection."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from voxelfm.probes.data import VectorDataset
from voxelfm.probes.trainer import TrainConfig, Trainer, lr_at


class _Spy(nn.Module):
    """A linear head that records the inputs it sees in eval mode."""

    input_kind = "vector"

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, 1)
        self.eval_inputs: list[torch.Tensor] = []
        self.train_inputs: list[torch.Tensor] = []

    def forward(self, x):
        (self.train_inputs if self.training else self.eval_inputs).append(x.detach().clone())
        return self.lin(x).squeeze(-1)


def _data(n=32, dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    y = (x[:, 0] > 0).float()
    return VectorDataset(x, y)


def _bce(out, y):
    return nn.functional.binary_cross_entropy_with_logits(out, y)


def test_noise_only_on_training_inputs():
    train, val = _data(32, seed=0), _data(16, seed=1)
    model = _Spy(4)
    trainer = Trainer(model, _bce, TrainConfig(epochs=2, batch_size=8, noise_p=1.0, noise_sigma=5.0, seed=0))
    trainer.fit(train, val, lambda out: 0.0)
    seen_val = torch.cat(model.eval_inputs)
    # validation passes: exactly the stored embeddings, in order, twice (one per epoch)
    assert torch.equal(seen_val, torch.cat([val.x, val.x]))
    # training passes: noisy (σ = 5) versions of the training embeddings
    seen_train = torch.cat(model.train_inputs)
    assert seen_train.shape == (64, 4)
    assert not any(torch.equal(r, s) for r in seen_train[:8] for s in train.x)
    model.eval_inputs.clear()
    test = _data(10, seed=2)
    trainer.predict(test)
    assert torch.equal(torch.cat(model.eval_inputs), test.x)
    # the datasets themselves are never modified
    assert torch.equal(train.x, _data(32, seed=0).x)


def test_noise_probability_p():
    ds = _data(2000, 4)
    trainer = Trainer(_Spy(4), _bce, TrainConfig(noise_p=0.25, noise_sigma=1.0, seed=0))
    out = trainer._add_noise({"x": ds.x, "y": ds.y})["x"]
    changed = (out != ds.x).any(1).float().mean().item()
    assert changed == pytest.approx(0.25, abs=0.04)


def test_training_batches_are_shuffled_every_epoch():
    ds = _data(40)
    trainer = Trainer(_Spy(4), _bce, TrainConfig(batch_size=8, seed=4))
    e1 = trainer.epoch_batches(ds, shuffle=True, batch_size=8)
    e2 = trainer.epoch_batches(ds, shuffle=True, batch_size=8)
    flat1, flat2 = list(itertools.chain(*e1)), list(itertools.chain(*e2))
    assert sorted(flat1) == list(range(40)) and sorted(flat2) == list(range(40))
    assert flat1 != list(range(40)) and flat1 != flat2
    # seeded: a new trainer with the same seed draws the same first epoch
    again = Trainer(_Spy(4), _bce, TrainConfig(batch_size=8, seed=4)).epoch_batches(ds, shuffle=True, batch_size=8)
    assert again == e1
    # evaluation passes are in order
    assert list(itertools.chain(*trainer.epoch_batches(ds, shuffle=False, batch_size=8))) == list(range(40))


@pytest.mark.parametrize("n", [16, 18])
def test_gradient_accumulation_equals_large_batch(n):
    """4 micro-batches of 4 with accumulation == one batch of 16 (also with a leftover group)."""
    ds = _data(n, 4)
    torch.manual_seed(0)
    base = nn.Linear(4, 1)

    class Head(nn.Module):
        input_kind = "vector"

        def __init__(self):
            super().__init__()
            self.lin = copy.deepcopy(base)

        def forward(self, x):
            return self.lin(x).squeeze(-1)

    def train(batch_size, accum):
        m = Head()
        cfg = TrainConfig(epochs=1, batch_size=batch_size, accum_steps=accum, optimizer="sgd", momentum=0.0,
                          weight_decay=0.0, lr=0.5, schedule="constant", seed=7)
        t = Trainer(m, _bce, cfg)
        opt = t._optimizer()
        t.train_epoch(ds, opt, None)
        return m.lin.weight.detach().clone(), m.lin.bias.detach().clone()

    w_acc, b_acc = train(4, 4)
    w_big, b_big = train(16, 1)
    torch.testing.assert_close(w_acc, w_big, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(b_acc, b_big, rtol=1e-6, atol=1e-7)
    # and different from the reference bug (unscaled sum of micro-batch losses = 4x the step)
    w_one, _ = train(4, 1)
    assert not torch.allclose(w_one, w_big)


def test_steps_and_schedule():
    cfg = TrainConfig(epochs=3, batch_size=4, accum_steps=3, lr=1.0, min_lr=0.1, schedule="cosine",
                      warmup_epochs=1)
    t = Trainer(_Spy(4), _bce, cfg)
    assert t.steps_per_epoch(10) == 4  # 3 + 3 + 3 + leftover 1
    total, warm = 12, 4
    lrs = [lr_at(s, total_steps=total, warmup_steps=warm, lr=1.0, min_lr=0.1, schedule="cosine")
           for s in range(total)]
    assert lrs[0] == pytest.approx(0.1 + 0.9 / 4) and lrs[3] == pytest.approx(1.0)
    assert lrs[4] == pytest.approx(1.0) and all(a >= b for a, b in itertools.pairwise(lrs[4:]))
    assert lrs[-1] > 0.1
    assert lr_at(100, total_steps=12, warmup_steps=0, lr=1.0, min_lr=0.1, schedule="cosine") == pytest.approx(0.1)
    assert lr_at(5, total_steps=12, warmup_steps=0, lr=1.0, min_lr=0.1, schedule="constant") == 1.0
    # the scheduler advances on the leftover step too: one epoch of 10 micro-batches → 4 steps
    ds = _data(40)
    m = _Spy(4)
    tr = Trainer(m, _bce, TrainConfig(epochs=1, batch_size=4, accum_steps=3, seed=0))
    opt = tr._optimizer()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    tr.train_epoch(ds, opt, sched)
    assert sched.last_epoch == 4


def test_model_selection_restores_best_validation_epoch():
    """Validation scores 0.5, 0.9, 0.7, 0.6: the weights after epoch 2 are kept, not the last ones."""
    train, val = _data(32, seed=0), _data(8, seed=1)
    model = _Spy(4)
    scores = iter([0.5, 0.9, 0.7, 0.6])
    snapshots = []
    trainer = Trainer(model, _bce, TrainConfig(epochs=4, batch_size=8, lr=0.1, seed=0))
    res = trainer.fit(train, val, lambda out: next(scores),
                      on_epoch=lambda row: snapshots.append(copy.deepcopy(model.state_dict())))
    assert res.best_epoch == 2 and res.best_score == 0.9
    assert [h["best"] for h in res.history] == [True, True, False, False]
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshots[1][k])
        assert not torch.equal(snapshots[3][k], snapshots[1][k])


def test_nan_scores_never_selected_and_patience():
    train, val = _data(32, seed=0), _data(8, seed=1)
    scores = iter([float("nan"), 0.3, float("nan"), 0.2, 0.1, 0.0])
    res = Trainer(_Spy(4), _bce, TrainConfig(epochs=6, batch_size=8, patience=2, seed=0)).fit(
        train, val, lambda out: next(scores))
    assert res.best_epoch == 2
    assert len(res.history) == 4  # stopped after two epochs without improvement


def test_config_validation():
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="step")
    with pytest.raises(ValueError, match="min_lr"):
        TrainConfig(lr=1e-3, min_lr=1e-2)
    assert np.isfinite(TrainConfig().lr)
