import math

import torch
from torch.distributions import Normal, kl_divergence

from training.networks import DenseAE, DenseVAE, gaussian_nll, kl_to_standard_normal


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(64, 5, generator=g) * 2
    logvar = torch.randn(64, 5, generator=g)
    q = Normal(mu, torch.exp(0.5 * logvar))
    p = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = kl_divergence(q, p).sum(dim=1)
    torch.testing.assert_close(kl_to_standard_normal(mu, logvar), expected, rtol=1e-5, atol=1e-5)


def test_kl_is_zero_at_the_prior():
    mu, logvar = torch.zeros(3, 4), torch.zeros(3, 4)
    assert torch.all(kl_to_standard_normal(mu, logvar) == 0)


def test_gaussian_nll_matches_log_prob():
    g = torch.Generator().manual_seed(1)
    x, mean, logvar = (torch.randn(10, 3, generator=g) for _ in range(3))
    expected = -Normal(mean, torch.exp(0.5 * logvar)).log_prob(x)
    torch.testing.assert_close(gaussian_nll(x, mean, logvar), expected, rtol=1e-5, atol=1e-5)
    # hand-computed: x = mean, unit variance -> 0.5 log(2 pi)
    assert math.isclose(float(gaussian_nll(torch.zeros(1), torch.zeros(1), torch.zeros(1))),
                        0.5 * math.log(2 * math.pi), rel_tol=1e-6)


def test_shapes():
    x = torch.randn(7, 12)
    ae = DenseAE(12, [16, 8], 3)
    assert ae(x).shape == (7, 12) and ae.encode(x).shape == (7, 3)
    vae = DenseVAE(12, [16, 8], 3)
    x_hat, mu, logvar = vae(x)
    assert x_hat.shape == (7, 12) and mu.shape == logvar.shape == (7, 3)
    assert vae.decoder_logvar.shape == (12,)
