import math

import pytest
import torch
import torch.nn.functional as F

from s5vh_cli.losses import center_alignment_loss, dcl_loss, reconstruction_loss


def naive_dcl(u, v, temperature, tau_plus, hard=None):
    """The debiased contrastive loss written anchor by anchor, straight from its definition; with ``hard``, one
    certain negative per video added to both of its anchors' denominators."""
    u = [x / x.norm() for x in u]
    v = [x / x.norm() for x in v]
    hard = None if hard is None else [x / x.norm() for x in hard]
    b = len(u)
    allv = u + v
    n = 2 * b - 2
    losses = []
    for a in range(2 * b):
        i = a % b
        partner = i + b if a < b else i
        pos = math.exp(float(u[i] @ v[i]) / temperature)
        neg = sum(math.exp(float(allv[a] @ allv[j]) / temperature) for j in range(2 * b) if j not in (a, partner))
        ng = max((neg - tau_plus * n * pos) / (1 - tau_plus), n * math.exp(-1 / temperature))
        if hard is not None:
            ng += math.exp(float(allv[a] @ hard[i]) / temperature)
        losses.append(-math.log(pos / (pos + ng)))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("tau_plus", [0.0, 0.05, 0.1, 0.5])
def test_dcl_matches_naive_definition(tau_plus):
    g = torch.Generator().manual_seed(3)
    u = torch.randn(5, 16, generator=g, dtype=torch.float64)
    v = u + 0.3 * torch.randn(5, 16, generator=g, dtype=torch.float64)
    got = float(dcl_loss(u, v, temperature=0.5, tau_plus=tau_plus))
    assert got == pytest.approx(naive_dcl(list(u), list(v), 0.5, tau_plus), rel=1e-10)


def test_dcl_clamp_engages():
    # identical views, orthogonal negatives and a large tau_plus: the debiased mass goes negative
    u = torch.eye(4, 8, dtype=torch.float64)
    got = float(dcl_loss(u, u.clone(), temperature=0.5, tau_plus=0.5))
    n = 6
    pos = math.exp(1 / 0.5)
    assert got == pytest.approx(naive_dcl(list(u), list(u.clone()), 0.5, 0.5), rel=1e-10)
    assert got == pytest.approx(-math.log(pos / (pos + n * math.exp(-2))), rel=1e-6)


def test_dcl_hard_negatives_match_definition_and_push_apart():
    g = torch.Generator().manual_seed(4)
    u = torch.randn(4, 12, generator=g, dtype=torch.float64)
    v = u + 0.2 * torch.randn(4, 12, generator=g, dtype=torch.float64)
    hard = (u + 0.5 * torch.randn(4, 12, generator=g, dtype=torch.float64)).requires_grad_(True)
    got = dcl_loss(u, v, 0.5, 0.1, hard)
    value = float(got.detach())
    assert value == pytest.approx(naive_dcl(list(u), list(v), 0.5, 0.1, hard=list(hard.detach())), rel=1e-10)
    assert value > float(dcl_loss(u, v, 0.5, 0.1))
    # the gradient moves each hard negative away from its anchor
    got.backward()
    step = F.normalize(hard.detach() - 0.1 * hard.grad, dim=1)
    before = (F.normalize(u, dim=1) * F.normalize(hard.detach(), dim=1)).sum(1)
    after = (F.normalize(u, dim=1) * step).sum(1)
    assert (after < before).all()


def test_dcl_needs_two_videos():
    with pytest.raises(ValueError):
        dcl_loss(torch.randn(1, 8), torch.randn(1, 8))


def test_center_alignment_is_soft_ce_averaged_over_views():
    g = torch.Generator().manual_seed(0)
    l1, l2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    t = torch.softmax(torch.randn(6, 5, generator=g), dim=-1).double()
    ce = torch.nn.CrossEntropyLoss()
    want = 0.5 * (ce(l1, t.float()) + ce(l2, t.float()))
    assert torch.allclose(center_alignment_loss([l1, l2], t), want, atol=1e-6)
    assert torch.allclose(center_alignment_loss(l1, t), ce(l1, t.float()), atol=1e-6)


def test_reconstruction_sums_views():
    a, b = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    ta, tb = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    assert torch.allclose(reconstruction_loss([a, b], [ta, tb]), F.mse_loss(a, ta) + F.mse_loss(b, tb))
    assert torch.allclose(reconstruction_loss(a, ta), F.mse_loss(a, ta))
