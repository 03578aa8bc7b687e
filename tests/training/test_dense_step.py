"""The dense ensembles' hand-written training step: autograd's loss and gradients."""

import pytest
import torch

from training.detector.tabular import Detector
from training.nn import dense_step
from training.nn.dense import EnsembleAE, EnsembleVAE
from training.nn.flat import flat_parameters


def _autograd(det: Detector, x_in, x, weights):
    """Loss and gradients by autograd, through the Detector's own objective."""
    det.network_.zero_grad()
    loss = det._loss(x_in, x, None, weights)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in det.network_.named_parameters()}


@pytest.mark.parametrize("kind", ["ae", "vae"])
@pytest.mark.parametrize("batches", ["shared", "weighted", "per member"])
def test_hand_written_gradients_are_autograds(kind, batches):
    torch.manual_seed(0)
    det = Detector(kind=kind, n_models=3, beta=0.7, cross_fit=False)
    det.resolved_ = {"latent_dim": 3}
    cls = EnsembleVAE if kind == "vae" else EnsembleAE
    det.network_ = cls(6, [16, 8], 3, n_members=3)
    if kind == "vae":  # clamps active: a decoder log-variance below its floor, codes outside
        with torch.no_grad():
            det.network_.decoder_logvar_raw[0, 0] = -20.0
            det.network_.logvar.bias[1, 0, 0] = 40.0
    x = torch.randn(*((3, 20, 6) if batches == "per member" else (20, 6))) * 3
    x_in = x + 0.1 * torch.randn(x.shape)
    weights = (torch.rand(3, 20) > 0.3).float() if batches == "weighted" else None
    torch.manual_seed(1)
    expected_loss, expected = _autograd(det, x_in, x, weights)
    with flat_parameters(det.network_) as flat:
        assert dense_step.supports(det.network_)
        flat.grad.fill_(float("nan"))  # every gradient must be written, none left over
        torch.manual_seed(1)  # the same reparameterisation draws
        loss = dense_step.DenseStep(det.network_, 0.7)(x_in, x, weights)
        got = {n: p.grad.clone() for n, p in det.network_.named_parameters()}
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-5)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)
    if kind == "vae":
        assert float(expected["decoder_logvar_raw"][0, 0]) == 0.0  # below the floor: no gradient
        assert float(expected["logvar.bias"][1, 0, 0]) == 0.0


def test_other_layers_train_through_autograd():
    assert not dense_step.supports(EnsembleVAE(6, [16], 2, activation="tanh"))
    assert not dense_step.supports(EnsembleAE(6, [16], 2, dropout=0.1))
    assert dense_step.supports(EnsembleAE(6, [16], 2))
