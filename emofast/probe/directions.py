"""Concept directions per layer from the two sides of a pair.

* ``mean-diff``: ``normalize(mean(left) - mean(right))``, from streamed per-label sums (no rows kept).
* ``lda``: shrinkage LDA, ``normalize((S + g I)^-1 (mean(left) - mean(right)))`` with ``S`` the pooled
  within-side covariance and the Ledoit-Wolf shrinkage toward a scaled identity; solved in the span of the
  training rows (Woodbury), so it costs ``O(N^2 D)`` rather than ``O(D^3)``.
* ``logreg``: L2-regularised logistic regression on the rows centred at the pair's midpoint.

All return unit directions ``[nL, D]`` (zero where the two sides do not differ) and the midpoint
``(mean(left) + mean(right)) / 2`` used by the centred score.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.special import log_expit

__all__ = ["METHODS", "mean_diff", "shrinkage_lda", "logistic", "normalize", "ledoit_wolf_shrinkage"]

METHODS = ("mean-diff", "lda", "logreg")


def normalize(v: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Unit vectors along the last axis; exact zeros stay zero (no NaN)."""
    n = v.norm(dim=-1, keepdim=True)
    return torch.where(n > eps, v / n.clamp(min=eps), torch.zeros_like(v))


# A mean difference below this fraction of the means' norm is float noise (the activations are fp32 or less):
# e.g. layer 0 at the last position of a chat template, the same token for every text. It gives a zero
# direction rather than a unit vector of rounding noise.
REL_TOL = 1e-5


def _negligible(diff: torch.Tensor, mu_left: torch.Tensor, mu_right: torch.Tensor) -> torch.Tensor:
    scale = torch.maximum(mu_left.norm(dim=-1), mu_right.norm(dim=-1))
    return diff.norm(dim=-1) <= REL_TOL * scale


def mean_diff(mu_left: torch.Tensor, mu_right: torch.Tensor) -> torch.Tensor:
    """``normalize(mu_left - mu_right)`` per layer: ``[nL, D]`` -> ``[nL, D]`` (zero where negligible).

    >>> mean_diff(torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 0.0]])).tolist()
    [[0.6, 0.8]]
    """
    a, b = mu_left.double(), mu_right.double()
    diff = a - b
    diff[_negligible(diff, a, b)] = 0.0
    return normalize(diff).float()


def ledoit_wolf_shrinkage(xc: np.ndarray) -> float:
    """Ledoit-Wolf intensity toward ``(tr S / D) I`` for centred rows ``xc [N, D]``, from the Gram matrix."""
    n, d = xc.shape
    gram = xc @ xc.T  # [N, N]
    sq = np.diag(gram)  # |x_i|^2
    tr = sq.sum() / n  # tr S
    nu = tr / d
    s_fro2 = (gram**2).sum() / n**2  # |S|_F^2
    d2 = s_fro2 - 2 * nu * tr + nu**2 * d  # |S - nu I|_F^2
    # b2 = 1/N^2 sum_i |x_i x_i^T - S|_F^2 = 1/N^2 sum_i (|x_i|^4 - 2 x_i^T S x_i + |S|_F^2)
    xsx = (gram**2).sum(axis=1) / n
    b2 = (sq**2 - 2 * xsx + s_fro2).sum() / n**2
    if d2 <= 0:
        return 1.0
    return float(min(max(b2 / d2, 0.0), 1.0))


def _no_difference(mu_l: np.ndarray, mu_r: np.ndarray) -> bool:
    return np.linalg.norm(mu_l - mu_r) <= REL_TOL * max(np.linalg.norm(mu_l), np.linalg.norm(mu_r))


def _lda_one(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    mu_l, mu_r = left.mean(0), right.mean(0)
    v = mu_l - mu_r
    xc = np.concatenate([left - mu_l, right - mu_r])  # [N, D]
    n, d = xc.shape
    if _no_difference(mu_l, mu_r):
        return np.zeros(d)
    g = ledoit_wolf_shrinkage(xc)
    nu = (xc**2).sum() / n / d
    alpha = g * nu  # ridge on the identity
    if alpha <= 0:  # all rows equal their side means: the covariance is zero
        return v
    # ((1-g) X^T X / n + alpha I)^-1 v  with U = sqrt((1-g)/n) X^T  (Woodbury, in the N-dim span of the rows)
    u = np.sqrt((1 - g) / n) * xc  # [N, D]
    small = alpha * np.eye(n) + u @ u.T
    w = (v - u.T @ np.linalg.solve(small, u @ v)) / alpha
    return w


def shrinkage_lda(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Shrinkage-LDA directions from rows ``left [n1, nL, D]`` and ``right [n0, nL, D]`` -> ``[nL, D]``."""
    a, b = left.double().numpy(), right.double().numpy()
    out = np.stack([_lda_one(a[:, i], b[:, i]) for i in range(a.shape[1])])
    return normalize(torch.from_numpy(out)).float()


def _logreg_one(left: np.ndarray, right: np.ndarray, l2: float) -> np.ndarray:
    mid = (left.mean(0) + right.mean(0)) / 2
    x = np.concatenate([left, right]) - mid
    scale = np.sqrt((x**2).sum(1).mean()) or 1.0
    x = x / scale
    y = np.concatenate([np.ones(len(left)), np.zeros(len(right))])
    n, d = x.shape
    if _no_difference(left.mean(0), right.mean(0)):
        return np.zeros(d)

    def f(params):
        w, b = params[:d], params[d]
        z = x @ w + b
        loss = -np.mean(y * log_expit(z) + (1 - y) * log_expit(-z)) + 0.5 * l2 * w @ w
        r = (1 / (1 + np.exp(-z)) - y) / n
        return loss, np.concatenate([x.T @ r + l2 * w, [r.sum()]])

    w0 = np.concatenate([left.mean(0) - right.mean(0), [0.0]]) / scale
    res = minimize(f, w0, jac=True, method="L-BFGS-B", options={"maxiter": 500})
    if not res.success:
        raise _NotConverged(res.x[:d], f"{res.message} after {res.nit} iterations")
    return res.x[:d]


class _NotConverged(Exception):
    def __init__(self, w, why):
        super().__init__(why)
        self.w = w


def logistic(left: torch.Tensor, right: torch.Tensor, l2: float = 1e-2, report: list | None = None) -> torch.Tensor:
    """Logistic-regression directions from rows ``left [n1, nL, D]``, ``right [n0, nL, D]`` -> ``[nL, D]``.

    Features are centred at the midpoint and scaled to unit RMS norm, so ``l2`` does not depend on the model's
    activation scale. Convergence of every layer's L-BFGS fit is checked: ``report`` (a list) receives one
    ``{"layer_position", "converged", "message"}`` per layer; a fit that stopped without converging also warns.

    >>> rep = []; w = logistic(torch.randn(8, 2, 3) + 1, torch.randn(8, 2, 3) - 1, report=rep)
    >>> w.shape, [r["converged"] for r in rep]
    (torch.Size([2, 3]), [True, True])
    """
    import warnings

    a, b = left.double().numpy(), right.double().numpy()
    out = []
    for i in range(a.shape[1]):
        try:
            w, ok, why = _logreg_one(a[:, i], b[:, i], l2), True, "converged"
        except _NotConverged as exc:
            w, ok, why = exc.w, False, str(exc)
            warnings.warn(f"logistic regression at layer position {i} did not converge: {why}", stacklevel=2)
        if report is not None:
            report.append({"layer_position": i, "converged": ok, "message": why})
        out.append(w)
    return normalize(torch.from_numpy(np.stack(out))).float()
