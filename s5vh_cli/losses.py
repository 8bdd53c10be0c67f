"""The three S5VH training losses: masked-frame reconstruction, debiased contrastive (DCL), centre alignment."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def reconstruction_loss(pred: Tensor | Sequence[Tensor], target: Tensor | Sequence[Tensor]) -> Tensor:
    """MSE between predicted and true raw features of the masked frames.

    Given lists (one entry per view), the per-view MSEs are summed, not averaged, as the released code does.
    """
    if isinstance(pred, Tensor):
        return F.mse_loss(pred, target)
    if len(pred) != len(target) or not pred:
        raise ValueError("reconstruction_loss: need one target per prediction")
    return sum((F.mse_loss(p, t) for p, t in zip(pred, target, strict=True)), torch.zeros((), device=pred[0].device))


def dcl_loss(u: Tensor, v: Tensor, temperature: float = 0.5, tau_plus: float = 0.1,
             hard: Tensor | None = None) -> Tensor:
    """Debiased contrastive loss (Chuang et al. 2020) between two views' mean codes ``u, v`` [B, L].

    Both are L2-normalised; each of the 2B anchors has its partner as positive and the other 2B-2 vectors as
    negatives. The debiased negative mass is clamped below at N*exp(-1/temperature), N = 2B-2.

    ``hard`` [B, L], optional: one known negative per video (e.g. its time-reversed sequence), added to the
    denominator of both of its anchors as it is (it is certainly a negative, so it is not debiased).
    """
    b = u.shape[0]
    if b < 2:
        raise ValueError("dcl_loss needs a batch of at least 2 videos")
    u = F.normalize(u, dim=1)
    v = F.normalize(v, dim=1)
    out = torch.cat([u, v], dim=0)
    sim = torch.exp(out @ out.t() / temperature)
    # drop self and partner from each anchor's negatives
    eye = torch.eye(b, dtype=torch.bool, device=u.device)
    not_pair = ~torch.cat([torch.cat([eye, eye], 1), torch.cat([eye, eye], 1)], 0)
    neg = sim.masked_select(not_pair).view(2 * b, -1)
    pos = torch.exp((u * v).sum(dim=-1) / temperature)
    pos = torch.cat([pos, pos], dim=0)
    n = 2 * b - 2
    ng = (neg.sum(dim=-1) - tau_plus * n * pos) / (1.0 - tau_plus)
    ng = torch.clamp(ng, min=n * math.exp(-1.0 / temperature))
    if hard is not None:
        h = F.normalize(hard, dim=1)
        ng = ng + torch.cat([torch.exp((u * h).sum(-1) / temperature), torch.exp((v * h).sum(-1) / temperature)])
    return (-torch.log(pos / (pos + ng))).mean()


def center_alignment_loss(logits: Tensor | Sequence[Tensor], soft_targets: Tensor) -> Tensor:
    """Cross-entropy of (already scaled) centre logits against soft pseudo-label targets [B, K].

    Given a list of logits (one per view), the per-view losses are averaged.
    """
    views = [logits] if isinstance(logits, Tensor) else list(logits)
    if not views:
        raise ValueError("center_alignment_loss: no logits given")
    total = torch.zeros((), device=views[0].device)
    for lg in views:
        t = soft_targets.to(lg.dtype)
        total = total + (-(t * F.log_softmax(lg, dim=-1)).sum(dim=-1)).mean()
    return total / len(views)
