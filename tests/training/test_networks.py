import math

import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal, kl_divergence

from training.nn.dense import EnsembleAE, EnsembleVAE
from training.nn.losses import (
    gaussian_nll,
    gaussian_nll_rows,
    kl_to_mixture_bound,
    kl_to_standard_normal,
)


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


def _gaussians(g: torch.Generator, *shape: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(*shape, generator=g) * 1.5, torch.randn(*shape, generator=g) * 0.5 - 1


def test_gaussian_nll_rows_is_the_feature_sum_of_gaussian_nll():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 4, generator=g)
    mean = torch.randn(3, 2, 5, 4, generator=g)  # (M, K, n, d)
    logvar = torch.randn(3, 4, generator=g)  # (M, d)
    expected = gaussian_nll(x, mean, logvar[:, None, None, :]).sum(dim=-1)
    got = gaussian_nll_rows(x, mean, logvar)
    assert got.shape == (3, 2, 5)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-5)
    # a view's decoder means are left as they were
    whole = mean.clone()
    gaussian_nll_rows(x, whole[:, 1:], logvar)
    torch.testing.assert_close(whole, mean, rtol=0, atol=0)


def test_kl_to_mixture_bound_is_the_closed_form_of_its_definition():
    g = torch.Generator().manual_seed(2)
    mu, logvar = _gaussians(g, 2, 6, 3)  # two members, six records
    prior_mu, prior_logvar = _gaussians(g, 2, 5, 3)  # five components each
    bound = kl_to_mixture_bound(mu, logvar, prior_mu, prior_logvar)
    assert bound.shape == (2, 6) and bound.dtype == torch.float64
    for m in range(2):
        q = Independent(Normal(mu[m, :, None], torch.exp(0.5 * logvar[m, :, None])), 1)
        p = Independent(Normal(prior_mu[m], torch.exp(0.5 * prior_logvar[m])), 1)
        pairwise = kl_divergence(q, p)  # (6, 5)
        expected = math.log(5) - torch.logsumexp(-pairwise, dim=1)
        torch.testing.assert_close(bound[m].float(), expected, rtol=1e-5, atol=1e-5)
    # one component: the bound is that Gaussian's KL exactly
    one = kl_to_mixture_bound(mu, logvar, prior_mu[:, :1], prior_logvar[:, :1])
    q = Independent(Normal(mu[0], torch.exp(0.5 * logvar[0])), 1)
    p = Independent(Normal(prior_mu[0, 0], torch.exp(0.5 * prior_logvar[0, 0])), 1)
    torch.testing.assert_close(one[0].float(), kl_divergence(q, p), rtol=1e-5, atol=1e-5)


def test_kl_to_mixture_bound_bounds_the_true_kl():
    g = torch.Generator().manual_seed(3)
    mu, logvar = _gaussians(g, 1, 4, 2)
    prior_mu, prior_logvar = _gaussians(g, 1, 3, 2)
    bound = kl_to_mixture_bound(mu, logvar, prior_mu, prior_logvar)[0]
    q = Independent(Normal(mu[0], torch.exp(0.5 * logvar[0])), 1)
    components = Independent(Normal(prior_mu[0], torch.exp(0.5 * prior_logvar[0])), 1)
    mixture = MixtureSameFamily(Categorical(torch.ones(3)), components)
    z = q.sample((100_000,))
    true_kl = (q.log_prob(z) - mixture.log_prob(z)).mean(dim=0)  # Monte-Carlo, ~0.01 accurate
    assert torch.all(bound.float() >= true_kl - 0.02), (bound, true_kl)
    assert torch.all(bound >= 0)


def test_kl_to_mixture_bound_keeps_far_components_finite():
    # components far away and narrow: the pairwise KLs are huge, the bound stays finite
    mu, logvar = torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)
    prior_mu = torch.full((1, 3, 4), 50.0)
    prior_logvar = torch.full((1, 3, 4), -12.0)
    bound = kl_to_mixture_bound(mu, logvar, prior_mu, prior_logvar)
    assert torch.isfinite(bound).all() and torch.all(bound > 1e6)


def test_shapes():
    x = torch.randn(7, 12)
    ae = EnsembleAE(12, [16, 8], 3, n_members=2)
    assert ae(x).shape == (2, 7, 12) and ae.encode(x).shape == (2, 7, 3)
    vae = EnsembleVAE(12, [16, 8], 3, n_members=2)
    x_hat, mu, logvar = vae(x)
    assert x_hat.shape == (2, 7, 12) and mu.shape == logvar.shape == (2, 7, 3)
    assert vae.decoder_logvar.shape == (2, 12)
