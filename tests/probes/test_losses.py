"""Cox partial likelihood (Breslow / Efron ties) against hand computation, scikit-survival and lifelines."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from voxelfm.probes.losses import cox_ph_loss, masked_bce_with_logits


def _hand(eta, t, e, ties):
    ll = 0.0
    for tj in sorted(set(t[e > 0].tolist())):
        d_set = (t == tj) & (e > 0)
        risk = t >= tj
        d = int(d_set.sum())
        ll += eta[d_set].sum()
        if ties == "breslow":
            ll -= d * np.log(np.exp(eta[risk]).sum())
        else:
            for l in range(d):
                ll -= np.log(np.exp(eta[risk]).sum() - l / d * np.exp(eta[d_set]).sum())
    return -ll / e.sum()


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_loss_equals_hand_computation_with_ties(ties):
    rng = np.random.default_rng(0)
    eta = rng.normal(size=12)
    t = np.array([5, 3, 3, 3, 1, 1, 8, 8, 2, 7, 7, 7.0])
    e = np.array([1, 1, 1, 0, 1, 0, 1, 1, 0, 0, 1, 1.0])
    got = cox_ph_loss(torch.tensor(eta), torch.tensor(t), torch.tensor(e), ties=ties).item()
    assert got == pytest.approx(_hand(eta, t, e, ties), rel=1e-10)
    # invariant to the order of the rows (the reference's running logcumsumexp is not, with ties)
    perm = rng.permutation(12)
    again = cox_ph_loss(torch.tensor(eta[perm]), torch.tensor(t[perm]), torch.tensor(e[perm]), ties=ties).item()
    assert again == pytest.approx(got, rel=1e-12)


def test_no_ties_breslow_equals_efron_and_no_events_is_zero():
    eta = torch.randn(6, dtype=torch.float64)
    t = torch.tensor([1.0, 2, 3, 4, 5, 6], dtype=torch.float64)
    e = torch.tensor([1.0, 0, 1, 1, 0, 1], dtype=torch.float64)
    assert cox_ph_loss(eta, t, e).item() == pytest.approx(cox_ph_loss(eta, t, e, ties="efron").item())
    z = cox_ph_loss(eta.requires_grad_(), t, torch.zeros(6, dtype=torch.float64))
    assert z.item() == 0.0
    z.backward()


def _fit_linear_cox(x, t, e, ties):
    xt = torch.tensor(x)
    beta = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([beta], lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = cox_ph_loss(xt @ beta, torch.tensor(t), torch.tensor(e), ties=ties)
        loss.backward()
        return loss

    opt.step(closure)
    return beta.detach().numpy()


def _tied_problem():
    rng = np.random.default_rng(3)
    n = 80
    x = rng.normal(size=(n, 2))
    t = np.ceil(rng.exponential(np.exp(-(x @ np.array([0.8, -0.5]))) * 5))  # integer times: many ties
    e = (rng.random(n) < 0.8).astype(float)
    return x, t, e


def test_breslow_coefficients_match_scikit_survival():
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    x, t, e = _tied_problem()
    assert len(np.unique(t)) < len(t) / 2  # really tied
    ours = _fit_linear_cox(x, t, e, "breslow")
    ref = CoxPHSurvivalAnalysis(ties="breslow").fit(x, Surv.from_arrays(e.astype(bool), t)).coef_
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_efron_coefficients_match_lifelines():
    from lifelines import CoxPHFitter

    x, t, e = _tied_problem()
    ours = _fit_linear_cox(x, t, e, "efron")
    df = pd.DataFrame({"x0": x[:, 0], "x1": x[:, 1], "T": t, "E": e})
    ref = CoxPHFitter().fit(df, "T", "E").params_.to_numpy()  # lifelines uses Efron ties
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_masked_bce_ignores_missing_labels():
    logits = torch.tensor([[0.3, -1.0], [2.0, 0.5]])
    y = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    got = masked_bce_with_logits(logits, y)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([0.3, 2.0, 0.5]),
                                                               torch.tensor([1.0, 0.0, 1.0]))
    assert got.item() == pytest.approx(ref.item())


@pytest.mark.parametrize("weighted", [False, True])
def test_segmentation_loss_is_the_same_for_channels_last_logits(weighted):
    """The decoder's channels-last logits take a faster path with the same value and gradient."""
    from voxelfm.probes.tasks import get_task

    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 5, 6)
    y = torch.randint(0, 4, (2, 3, 5, 6), dtype=torch.int16)
    hp = {"_class_weights": [0.5, 1.0, 2.0, 1.5]} if weighted else {}
    task = get_task("segmentation")
    first = logits.clone().requires_grad_()
    last = logits.permute(0, 2, 3, 4, 1).contiguous().permute(0, 4, 1, 2, 3).requires_grad_()
    assert not last.is_contiguous() and last.movedim(1, -1).is_contiguous()
    a, b = task.loss(first, y, hp), task.loss(last, y, hp)
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(first.grad, last.grad)
