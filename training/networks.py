"""Plain torch modules: dense autoencoders and variational autoencoders, single or ensembled.

The Detector owns training and scoring; these modules only map tensors to tensors. An ensemble
holds M independently initialised members whose layers run as one batched matrix product, so
a small ensemble costs little more than one network on the small batches tables train with.
Ensemble tensors carry the member as their first dimension: (M, ..., features).
"""

from __future__ import annotations

import math

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "tanh": nn.Tanh,
               "gelu": nn.GELU, "silu": nn.SiLU}

# Lower bound on a decoder log-variance: keeps the Gaussian likelihood from collapsing onto a
# feature that is (almost) constant in training, which would make its error dominate every score.
MIN_DECODER_LOGVAR = math.log(1e-3)


class EnsembleLinear(nn.Module):
    """M independent linear maps applied at once: (M, ..., a) -> (M, ..., b).

    Each member is initialised like ``nn.Linear`` (uniform in ±1/sqrt(a)).
    """

    def __init__(self, n_members: int, in_features: int, out_features: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(
            torch.empty(n_members, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_members, 1, out_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, *mid, a = x.shape
        out = torch.baddbmm(self.bias, x.reshape(m, -1, a), self.weight)
        return out.reshape(m, *mid, out.shape[-1])


def mlp(sizes: list[int], activation: str, dropout: float, last_activation: bool,
        n_members: int = 1) -> nn.Sequential:
    """Ensemble linear layers of the given sizes, with activation (and dropout) between them."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(EnsembleLinear(n_members, a, b))
        if i < len(sizes) - 2 or last_activation:
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def _members(x: torch.Tensor, n_members: int) -> torch.Tensor:
    """(n, d) -> (M, n, d) (a view); (M, ..., d) passes through."""
    return x.expand(n_members, *x.shape) if x.dim() == 2 else x


class EnsembleAE(nn.Module):
    """M deterministic autoencoders ``x -> z -> x_hat``.

    Args:
        n_features: input width d.
        hidden_sizes: widths of the encoder's hidden layers (the decoder mirrors them).
        latent_dim: width of the code z.
        n_members: ensemble size M.
    """

    def __init__(self, n_features: int, hidden_sizes: list[int], latent_dim: int,
                 activation: str = "relu", dropout: float = 0.0, n_members: int = 1):
        super().__init__()
        self.n_members = n_members
        self.encoder = mlp([n_features, *hidden_sizes, latent_dim], activation, dropout, False,
                           n_members)
        self.decoder = mlp([latent_dim, *reversed(hidden_sizes), n_features], activation,
                           dropout, False, n_members)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(n, d) or (M, n, d) -> (M, n, latent_dim)."""
        return self.encoder(_members(x, self.n_members))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(M, ..., latent_dim) -> (M, ..., d)."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, d) -> reconstructions (M, n, d)."""
        return self.decode(self.encode(x))


class EnsembleVAE(nn.Module):
    """M variational autoencoders with Gaussian encoders and Gaussian decoders.

    Each decoder's variance is one learned parameter per feature: the likelihood then weighs
    each feature's error by how well that feature can be reconstructed at all.
    """

    def __init__(self, n_features: int, hidden_sizes: list[int], latent_dim: int,
                 activation: str = "relu", dropout: float = 0.0, n_members: int = 1):
        super().__init__()
        self.n_members = n_members
        self.encoder = mlp([n_features, *hidden_sizes], activation, dropout, True, n_members)
        last = hidden_sizes[-1] if hidden_sizes else n_features
        self.mu = EnsembleLinear(n_members, last, latent_dim)
        self.logvar = EnsembleLinear(n_members, last, latent_dim)
        self.decoder = mlp([latent_dim, *reversed(hidden_sizes), n_features], activation,
                           dropout, False, n_members)
        self.decoder_logvar_raw = nn.Parameter(torch.zeros(n_members, n_features))

    @property
    def decoder_logvar(self) -> torch.Tensor:
        """(M, d) per-feature log-variance of p(x | z), floored."""
        return self.decoder_logvar_raw.clamp(min=MIN_DECODER_LOGVAR)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, d) or (M, n, d) -> posterior mean and log-variance, each (M, n, latent_dim)."""
        h = self.encoder(_members(x, self.n_members))
        return self.mu(h), self.logvar(h).clamp(-20.0, 10.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(M, ..., latent_dim) -> decoder mean (M, ..., d)."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reparameterised pass.

        Args:
            x: (n, d) inputs.
            eps: optional standard-normal draws broadcastable to (M, n, latent_dim); fresh
                ones when None.

        Returns:
            ``(x_hat, mu, logvar)``: decoder means (M, n, d), posterior means and
            log-variances (M, n, latent_dim).
        """
        mu, logvar = self.encode(x)
        if eps is None:
            eps = torch.randn_like(mu)
        z = mu + eps * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar


class DenseAE(EnsembleAE):
    """One deterministic autoencoder: the ensemble with a single member, without its axis."""

    def __init__(self, n_features: int, hidden_sizes: list[int], latent_dim: int,
                 activation: str = "relu", dropout: float = 0.0):
        super().__init__(n_features, hidden_sizes, latent_dim, activation, dropout, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (n, latent_dim)."""
        return super().encode(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(n, latent_dim) -> (n, d)."""
        return super().decode(z.unsqueeze(0))[0]


class DenseVAE(EnsembleVAE):
    """One variational autoencoder: the ensemble with a single member, without its axis."""

    def __init__(self, n_features: int, hidden_sizes: list[int], latent_dim: int,
                 activation: str = "relu", dropout: float = 0.0):
        super().__init__(n_features, hidden_sizes, latent_dim, activation, dropout, 1)

    @property
    def decoder_logvar(self) -> torch.Tensor:
        """(d,) per-feature log-variance of p(x | z), floored."""
        return super().decoder_logvar[0]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, d) -> posterior mean and log-variance, each (n, latent_dim)."""
        mu, logvar = super().encode(x)
        return mu[0], logvar[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(..., latent_dim) -> decoder mean (..., d)."""
        return super().decode(z.unsqueeze(0))[0]


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


def legacy_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A single-network state dict of format 1 (``nn.Linear`` layers) in the ensemble layout."""
    out = {}
    for key, v in state.items():
        if key.endswith(".weight") and v.dim() == 2:
            out[key] = v.t().unsqueeze(0).contiguous()
        elif key.endswith(".bias") and v.dim() == 1:
            out[key] = v.view(1, 1, -1)
        elif key == "decoder_logvar_raw":
            out[key] = v.unsqueeze(0)
        else:
            out[key] = v
    return out
