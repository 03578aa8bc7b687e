"""Plain torch modules: convolutional autoencoder and convolutional VAE.

Images travel between the Detector and these modules as flat rows (n, C*H*W), channel-major,
so the scoring code is the same as for the dense networks; each module reshapes to
(n, C, H, W) inside. An image whose sides are not multiples of 2**len(widths) is zero-padded
on the way in and the output cropped back.

Encoder: per width w, a stride-2 3x3 convolution to w channels and the activation; then a
linear map of the flattened features to the code. Decoder: the mirror, a linear map back to
the smallest feature map and 4x4 stride-2 transposed convolutions, the last one to the image's
channels with a linear output (a sigmoid saturates early in training, when the optimiser
drives every pixel towards a dark background, and the network never recovers).

:class:`ConvEnsemble` holds M such networks behind the dense ensembles' tensor contract (the
member is the first dimension: (M, ..., features)), which is what the Detector trains and scores.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from training.nn.dense import ACTIVATIONS, MIN_DECODER_LOGVAR, POSTERIOR_LOGVAR_RANGE


class _ConvCoder(nn.Module):
    """Shared body: convolutional encoder to features, decoder from a code to images."""

    def __init__(self, shape: tuple[int, int, int], widths: list[int], code_in: int,
                 code_out: int, activation: str, dropout: float):
        super().__init__()
        c, h, w = shape
        self.shape = (c, h, w)
        steps = 2 ** len(widths)
        self.padded = (-(-h // steps) * steps, -(-w // steps) * steps)
        self.bottom = (widths[-1], self.padded[0] // steps, self.padded[1] // steps)
        n_bottom = widths[-1] * self.bottom[1] * self.bottom[2]
        act = ACTIVATIONS[activation]
        enc: list[nn.Module] = []
        for a, b in zip([c, *widths[:-1]], widths):
            enc += [nn.Conv2d(a, b, 3, stride=2, padding=1), act()]
        enc.append(nn.Flatten())
        if dropout > 0:
            enc.append(nn.Dropout(dropout))
        self.features = nn.Sequential(*enc)
        self.to_code = nn.Linear(n_bottom, code_out)
        dec: list[nn.Module] = [nn.Linear(code_in, n_bottom), act(), nn.Unflatten(1, self.bottom)]
        rev = list(reversed(widths))
        for a, b in zip(rev[:-1], rev[1:]):
            dec += [nn.ConvTranspose2d(a, b, 4, stride=2, padding=1), act()]
        dec.append(nn.ConvTranspose2d(rev[-1], c, 4, stride=2, padding=1))
        self.decoder = nn.Sequential(*dec)

    def _images(self, x: torch.Tensor) -> torch.Tensor:
        """(n, C*H*W) -> (n, C, H', W'), zero-padded to multiples of the total stride."""
        c, h, w = self.shape
        img = x.reshape(-1, c, h, w)
        ph, pw = self.padded[0] - h, self.padded[1] - w
        return F.pad(img, (0, pw, 0, ph)) if ph or pw else img

    def encode_features(self, x: torch.Tensor) -> torch.Tensor:
        """(n, C*H*W) -> (n, code_out)."""
        return self.to_code(self.features(self._images(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(..., latent_dim) -> pixel means (..., C*H*W)."""
        lead = z.shape[:-1]
        c, h, w = self.shape
        out = self.decoder(z.reshape(-1, z.shape[-1]))[:, :, :h, :w]
        return out.reshape(*lead, c * h * w)


class ConvAE(_ConvCoder):
    """Deterministic convolutional autoencoder ``x -> z -> x_hat``.

    Args:
        shape: (C, H, W) of the images.
        widths: channels of the encoder's stages, each halving the resolution.
        latent_dim: width of the code z.
    """

    def __init__(self, shape: tuple[int, int, int], widths: list[int], latent_dim: int,
                 activation: str = "relu", dropout: float = 0.0):
        super().__init__(shape, widths, latent_dim, latent_dim, activation, dropout)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(n, C*H*W) -> (n, latent_dim)."""
        return self.encode_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, C*H*W) -> reconstruction (n, C*H*W)."""
        return self.decode(self.encode(x))


class ConvVAE(_ConvCoder):
    """Convolutional VAE: Gaussian encoder, Gaussian decoder with a learned variance per pixel.

    Args: as :class:`ConvAE`.
    """

    def __init__(self, shape: tuple[int, int, int], widths: list[int], latent_dim: int,
                 activation: str = "relu", dropout: float = 0.0):
        super().__init__(shape, widths, latent_dim, 2 * latent_dim, activation, dropout)
        self.latent_dim = latent_dim
        self.decoder_logvar_raw = nn.Parameter(torch.zeros(shape[0] * shape[1] * shape[2]))

    @property
    def decoder_logvar(self) -> torch.Tensor:
        """(C*H*W,) per-pixel log-variance of p(x | z), floored."""
        return self.decoder_logvar_raw.clamp(min=MIN_DECODER_LOGVAR)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, C*H*W) -> posterior mean and log-variance, each (n, latent_dim)."""
        h = self.encode_features(x)
        mu, logvar = h[:, : self.latent_dim], h[:, self.latent_dim :]
        return mu, logvar.clamp(*POSTERIOR_LOGVAR_RANGE)

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reparameterised pass; returns ``(x_hat, mu, logvar)`` as :class:`DenseVAE` does."""
        mu, logvar = self.encode(x)
        if eps is None:
            eps = torch.randn_like(mu)
        z = mu + eps * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar


class ConvEnsemble(nn.Module):
    """M convolutional AEs or VAEs, with the tensor contract of the dense ensembles.

    Inputs (n, d) go to every member; (M, n, d) gives each member its own slice. Outputs carry
    the member first: codes (M, n, k), reconstructions (M, ..., d), ``decoder_logvar`` (M, d).
    """

    def __init__(self, members: list[ConvAE] | list[ConvVAE]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.n_members = len(members)
        self.variational = isinstance(members[0], ConvVAE)

    def _inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x] * self.n_members if x.dim() == 2 else list(x)

    @property
    def decoder_logvar(self) -> torch.Tensor:
        """(M, d) per-pixel log-variances (VAE members only)."""
        return torch.stack([m.decoder_logvar for m in self.members])

    def encode(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(n, d) or (M, n, d) -> codes (M, n, k), or posterior means and log-variances."""
        codes = [m.encode(xi) for m, xi in zip(self.members, self._inputs(x))]
        if self.variational:
            return torch.stack([c[0] for c in codes]), torch.stack([c[1] for c in codes])
        return torch.stack(codes)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(M, ..., k) -> pixel means (M, ..., d)."""
        return torch.stack([m.decode(zi) for m, zi in zip(self.members, z)])

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None):
        """AE: reconstructions (M, n, d). VAE: ``(x_hat, mu, logvar)`` with the member first;
        ``eps`` broadcasts to (M, n, k), fresh draws when None."""
        if not self.variational:
            return self.decode(self.encode(x))
        mu, logvar = self.encode(x)
        if eps is None:
            eps = torch.randn_like(mu)
        return self.decode(mu + eps * torch.exp(0.5 * logvar)), mu, logvar
