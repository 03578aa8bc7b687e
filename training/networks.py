"""Plain torch modules: dense autoencoder and dense variational autoencoder.

The Detector owns training and scoring; these modules only map tensors to tensors.
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


def mlp(sizes: list[int], activation: str, dropout: float, last_activation: bool) -> nn.Sequential:
    """Linear layers of the given sizes, with activation (and dropout) between them."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_activation:
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class DenseAE(nn.Module):
    """Deterministic autoencoder ``x -> z -> x_hat``.

    Args:
        n_features: input width d.
        hidden_sizes: widths of the encoder's hidden layers (the decoder mirrors them).
        latent_dim: width of the code z.
    """

    def __init__(self, n_features: int, hidden_sizes: list[int], latent_dim: int,
                 activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        self.encoder = mlp([n_features, *hidden_sizes, latent_dim], activation, dropout, False)
        self.decoder = mlp([latent_dim, *reversed(hidden_sizes), n_features], activation,
                           dropout, False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (n, latent_dim)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(n, latent_dim) -> (n, d)."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, d) -> reconstruction (n, d)."""
        return self.decode(self.encode(x))


class DenseVAE(nn.Module):
    """Variational autoencoder with a Gaussian encoder and a Gaussian decoder.

    The decoder's variance is one learned parameter per feature: the likelihood then weighs
    each feature's error by how well that feature can be reconstructed at all.
    """

    def __init__(self, n_features: int, hidden_sizes: list[int], latent_dim: int,
                 activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        self.encoder = mlp([n_features, *hidden_sizes], activation, dropout, True)
        last = hidden_sizes[-1] if hidden_sizes else n_features
        self.mu = nn.Linear(last, latent_dim)
        self.logvar = nn.Linear(last, latent_dim)
        self.decoder = mlp([latent_dim, *reversed(hidden_sizes), n_features], activation,
                           dropout, False)
        self.decoder_logvar_raw = nn.Parameter(torch.zeros(n_features))

    @property
    def decoder_logvar(self) -> torch.Tensor:
        """(d,) per-feature log-variance of p(x | z), floored."""
        return self.decoder_logvar_raw.clamp(min=MIN_DECODER_LOGVAR)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, d) -> posterior mean and log-variance, each (n, latent_dim)."""
        h = self.encoder(x)
        return self.mu(h), self.logvar(h).clamp(-20.0, 10.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(..., latent_dim) -> decoder mean (..., d)."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reparameterised pass.

        Args:
            x: (n, d) inputs.
            eps: optional (n, latent_dim) standard-normal draws; fresh ones when None.

        Returns:
            ``(x_hat, mu, logvar)``: decoder mean (n, d), posterior mean and log-variance.
        """
        mu, logvar = self.encode(x)
        if eps is None:
            eps = torch.randn_like(mu)
        z = mu + eps * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per record: ½ Σ (σ² + μ² − 1 − log σ²).

    Args:
        mu, logvar: (n, k).

    Returns:
        (n,) KL divergences.
    """
    return 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(dim=-1)


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Element-wise −log N(x; mean, exp(logvar)); shapes broadcast, returns the broadcast shape."""
    return 0.5 * (math.log(2 * math.pi) + logvar + (x - mean).pow(2) / logvar.exp())
