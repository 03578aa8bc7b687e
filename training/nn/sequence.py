"""Plain torch modules: autoencoders and VAEs over windows of a multivariate series.

Windows travel between the Detector and these modules as flat rows (n, W*C), time-major (the
value of channel c at step t is column ``t * C + c``); each module reshapes inside. Two bodies:

- ``conv``: per width w, a stride-2 1-D convolution (kernel 7) over time to w channels and the
  activation, then a linear map of the flattened features to the code; the decoder mirrors it
  with stride-2 transposed convolutions, the last one to the C channels with a linear output.
  A window whose length is not a multiple of ``2**len(widths)`` is zero-padded and cropped back.
- ``gru``: a GRU over the window's steps, its last hidden state mapped to the code; the decoder
  starts a GRU from the code and feeds it the code at every step, a linear map reading each
  step's C values.

:class:`SequenceEnsemble` holds M such networks behind the ensembles' tensor contract (the
member first: (M, ..., features)), which is what the Detector trains and scores.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from training.nn.conv import ConvEnsemble
from training.nn.dense import ACTIVATIONS, MIN_DECODER_LOGVAR, POSTERIOR_LOGVAR_RANGE

KERNEL = 7


class _ConvBody(nn.Module):
    """1-D convolutional encoder to ``code_out`` values, decoder from ``code_in`` values."""

    def __init__(self, window: int, channels: int, widths: list[int], code_in: int,
                 code_out: int, activation: str, dropout: float):
        super().__init__()
        self.window, self.channels = window, channels
        steps = 2 ** len(widths)
        self.padded = -(-window // steps) * steps
        self.bottom = (widths[-1], self.padded // steps)
        n_bottom = widths[-1] * self.bottom[1]
        act = ACTIVATIONS[activation]
        enc: list[nn.Module] = []
        for a, b in zip([channels, *widths[:-1]], widths):
            enc += [nn.Conv1d(a, b, KERNEL, stride=2, padding=KERNEL // 2), act()]
        enc.append(nn.Flatten())
        if dropout > 0:
            enc.append(nn.Dropout(dropout))
        self.features = nn.Sequential(*enc, nn.Linear(n_bottom, code_out))
        dec: list[nn.Module] = [nn.Linear(code_in, n_bottom), act(), nn.Unflatten(1, self.bottom)]
        rev = list(reversed(widths))
        for a, b in zip(rev[:-1], rev[1:]):
            dec += [nn.ConvTranspose1d(a, b, 4, stride=2, padding=1), act()]
        dec.append(nn.ConvTranspose1d(rev[-1], channels, 4, stride=2, padding=1))
        self.decoder = nn.Sequential(*dec)

    def encode_features(self, x: torch.Tensor) -> torch.Tensor:
        """(n, W*C) -> (n, code_out)."""
        seq = x.reshape(-1, self.window, self.channels).transpose(1, 2)  # (n, C, W)
        pad = self.padded - self.window
        return self.features(F.pad(seq, (0, pad)) if pad else seq)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(..., code_in) -> window means (..., W*C)."""
        lead = z.shape[:-1]
        out = self.decoder(z.reshape(-1, z.shape[-1]))[:, :, : self.window]  # (n, C, W)
        return out.transpose(1, 2).reshape(*lead, self.window * self.channels)


class _GRUBody(nn.Module):
    """GRU encoder to ``code_out`` values, GRU decoder from ``code_in`` values."""

    def __init__(self, window: int, channels: int, widths: list[int], code_in: int,
                 code_out: int, activation: str, dropout: float):
        super().__init__()
        self.window, self.channels = window, channels
        hidden = widths[-1]
        self.encoder = nn.GRU(channels, hidden, batch_first=True)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.to_code = nn.Linear(hidden, code_out)
        self.from_code = nn.Linear(code_in, hidden)
        self.decoder = nn.GRU(code_in, hidden, batch_first=True)
        self.readout = nn.Linear(hidden, channels)

    def encode_features(self, x: torch.Tensor) -> torch.Tensor:
        """(n, W*C) -> (n, code_out)."""
        _, h = self.encoder(x.reshape(-1, self.window, self.channels))  # h: (1, n, hidden)
        return self.to_code(self.drop(h[0]))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(..., code_in) -> window means (..., W*C)."""
        lead = z.shape[:-1]
        flat = z.reshape(-1, z.shape[-1])
        h0 = torch.tanh(self.from_code(flat)).unsqueeze(0)
        out, _ = self.decoder(flat.unsqueeze(1).expand(-1, self.window, -1).contiguous(), h0)
        return self.readout(out).reshape(*lead, self.window * self.channels)


_BODIES = {"conv": _ConvBody, "gru": _GRUBody}


class SequenceAE(nn.Module):
    """Deterministic autoencoder of windows ``x -> z -> x_hat``.

    Args:
        window: steps W per window; channels: C values per step.
        widths: ``conv``: channels of the encoder's stages, each halving the time axis;
            ``gru``: the last is the hidden size.
        latent_dim: width of the code z.
        architecture: ``conv`` or ``gru``.
    """

    def __init__(self, window: int, channels: int, widths: list[int], latent_dim: int,
                 architecture: str = "conv", activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        self.body = _BODIES[architecture](window, channels, widths, latent_dim, latent_dim,
                                          activation, dropout)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(n, W*C) -> (n, latent_dim)."""
        return self.body.encode_features(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(..., latent_dim) -> (..., W*C)."""
        return self.body.decode(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, W*C) -> reconstruction (n, W*C)."""
        return self.decode(self.encode(x))


class SequenceVAE(nn.Module):
    """VAE of windows: Gaussian encoder, Gaussian decoder with a learned variance per value.

    Args: as :class:`SequenceAE`.
    """

    def __init__(self, window: int, channels: int, widths: list[int], latent_dim: int,
                 architecture: str = "conv", activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        self.latent_dim = latent_dim
        self.body = _BODIES[architecture](window, channels, widths, latent_dim, 2 * latent_dim,
                                          activation, dropout)
        self.decoder_logvar_raw = nn.Parameter(torch.zeros(window * channels))

    @property
    def decoder_logvar(self) -> torch.Tensor:
        """(W*C,) log-variance of p(x | z) per value, floored."""
        return self.decoder_logvar_raw.clamp(min=MIN_DECODER_LOGVAR)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, W*C) -> posterior mean and log-variance, each (n, latent_dim)."""
        h = self.body.encode_features(x)
        mu, logvar = h[:, : self.latent_dim], h[:, self.latent_dim :]
        return mu, logvar.clamp(*POSTERIOR_LOGVAR_RANGE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(..., latent_dim) -> (..., W*C)."""
        return self.body.decode(z)

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reparameterised pass; returns ``(x_hat, mu, logvar)``."""
        mu, logvar = self.encode(x)
        if eps is None:
            eps = torch.randn_like(mu)
        return self.decode(mu + eps * torch.exp(0.5 * logvar)), mu, logvar


class SequenceEnsemble(ConvEnsemble):
    """M sequence AEs or VAEs with the ensembles' tensor contract (see :class:`ConvEnsemble`)."""

    def __init__(self, members: list[SequenceAE] | list[SequenceVAE]):
        super().__init__(members)
        self.variational = isinstance(members[0], SequenceVAE)
