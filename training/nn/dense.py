"""Plain torch modules: dense autoencoders and variational autoencoders, ensembled.

The Detector owns training and scoring; these modules only map tensors to tensors. An ensemble
holds M independently initialised members whose layers run as one batched matrix product, so
a small ensemble costs little more than one network on the small batches tables train with.
Ensemble tensors carry the member as their first dimension: (M, ..., features).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from training.nn.names import ACTIVATION_NAMES

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "tanh": nn.Tanh,
               "gelu": nn.GELU, "silu": nn.SiLU}
assert sorted(ACTIVATIONS) == sorted(ACTIVATION_NAMES), "training.nn.names lists every activation"


# Lower bound on a decoder log-variance: keeps the Gaussian likelihood from collapsing onto a
# feature that is (almost) constant in training, which would make its error dominate every score.
MIN_DECODER_LOGVAR = math.log(1e-3)
# Range the posterior log-variance is clamped to: keeps exp(logvar) finite in float32.
POSTERIOR_LOGVAR_RANGE = (-20.0, 10.0)


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
        if x.dim() == 3:  # (M, n, a): no reshapes (each costs a dispatch, and one more backward)
            return torch.baddbmm(self.bias, x, self.weight)
        m, *mid, a = x.shape
        out = torch.baddbmm(self.bias, x.reshape(m, -1, a), self.weight)
        return out.reshape(m, *mid, out.shape[-1])


class Chain(nn.Sequential):
    """``nn.Sequential`` that calls each layer's ``forward`` directly: these layers carry no
    hooks, and the module call machinery costs about as much per layer as a small layer's
    arithmetic, a tenth of a table network's training step."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer.forward(x)
        return x


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
    return Chain(*layers)


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
        return self.mu.forward(h), self.logvar.forward(h).clamp(*POSTERIOR_LOGVAR_RANGE)

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

