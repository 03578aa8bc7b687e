"""Likelihoods and KL divergences of the VAE objective and scores (closed forms, batched).
"""

from __future__ import annotations

import math

import torch


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per record: ½ Σ (σ² + μ² − 1 − log σ²).

    Args:
        mu, logvar: (..., k).

    Returns:
        (...,) KL divergences.
    """
    return 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(dim=-1)


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Element-wise −log N(x; mean, exp(logvar)); shapes broadcast, returns the broadcast shape."""
    return 0.5 * (math.log(2 * math.pi) + logvar + (x - mean).pow(2) / logvar.exp())


def gaussian_nll_rows(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """:func:`gaussian_nll` summed over the features, with one log-variance per member and
    feature: the squared errors are formed once and weighted in place, and the log-variance
    terms are summed once per member rather than once per record (a third of the passes over
    the (M, ..., n, d) errors).

    Args:
        x: (n, d) records.
        mean: (M, ..., n, d) decoder means.
        logvar: (M, d) decoder log-variances.

    Returns:
        (M, ..., n) negative log-likelihoods.
    """
    m, d = logvar.shape
    shape = (m, *[1] * (mean.dim() - 2))
    sq = (mean - x).square_().mul_(torch.exp(-logvar).reshape(*shape, d))
    return 0.5 * (sq.sum(dim=-1) + (logvar.sum(dim=-1) + d * math.log(2 * math.pi)).reshape(shape))


def _logsumexp_fast(x: torch.Tensor) -> torch.Tensor:
    """log Σ exp over the last axis. Terms more than 60 below the largest add < 1e-26 of it and
    are clamped there: exp of far-negative numbers takes a slow path on CPUs (4x slower here)."""
    top = x.amax(dim=-1, keepdim=True)
    return (x - top).clamp_(min=-60.0).exp_().sum(dim=-1).log_() + top.squeeze(-1)


def kl_to_mixture_bound(mu: torch.Tensor, logvar: torch.Tensor, prior_mu: torch.Tensor,
                        prior_logvar: torch.Tensor) -> torch.Tensor:
    """Upper bound on KL(q || (1/R) Σ_r p_r) for Gaussians q = N(mu, diag exp(logvar)) and an
    equal-weight mixture of diagonal Gaussians p_r: −log (1/R) Σ_r exp(−KL(q || p_r)).

    The bound follows from the convexity of log-sum-exp (E_q[log Σ_r w_r p_r(z)] ≥
    log Σ_r w_r exp(E_q[log p_r(z)])); it is exact when q is much narrower than the p_r, is
    closed-form and deterministic, and costs one matrix product per member: the pairwise KLs
    are expanded so that n × R pairs need no (n, R, k) tensor. The expansion is computed in
    float64, where its cancellation loses no precision that matters.

    Args:
        mu, logvar: (M, n, k) the records' posteriors, one set per ensemble member.
        prior_mu, prior_logvar: (M, R, k) the members' mixture components.

    Returns:
        (M, n) float64 bounds, each ≥ 0.
    """
    mu, logvar = mu.double(), logvar.double()
    prior_mu, prior_logvar = prior_mu.double(), prior_logvar.double()
    inv_var = torch.exp(-prior_logvar)  # (M, R, k)
    # 2 KL(q || p_r) = Σ_j [(σ²_q + μ²_q) / σ²_r − 2 μ_q μ_r / σ²_r + μ²_r / σ²_r
    #                      + log σ²_r − log σ²_q − 1]
    q_part = torch.cat([logvar.exp() + mu.pow(2), mu], dim=-1)  # (M, n, 2k)
    r_part = torch.cat([inv_var, -2.0 * prior_mu * inv_var], dim=-1)  # (M, R, 2k)
    r_const = (prior_mu.pow(2) * inv_var + prior_logvar).sum(-1)  # (M, R)
    q_const = (logvar + 1.0).sum(-1)  # (M, n)
    # −KL − ½ q_const in one pass; q_const is the same for every component, added back after.
    half_neg = torch.baddbmm(r_const.unsqueeze(1), q_part, r_part.transpose(1, 2),
                             beta=-0.5, alpha=-0.5)  # (M, n, R)
    # The cancellation is over once the KLs are formed: float32 keeps them to ~1e-7 relative.
    log_mean = _logsumexp_fast(half_neg.float()).double() + 0.5 * q_const
    return (math.log(prior_mu.shape[1]) - log_mean).clamp(min=0.0)

