"""Training on one flat parameter tensor: the same updates as torch's Adam, and parameters that
own their storage again afterwards."""

import pytest
import torch

from training.nn.dense import EnsembleVAE
from training.nn.flat import FlatAdam, flat_parameters


def _loss(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    x_hat, mu, logvar = net(x, torch.zeros(1, 1, 2))
    return (x_hat - x).pow(2).mean() + mu.pow(2).mean() + logvar.exp().mean()


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_flat_adam_takes_the_steps_of_torch_adam(weight_decay):
    torch.manual_seed(0)
    ours, theirs = EnsembleVAE(5, [8], 2, n_members=2), EnsembleVAE(5, [8], 2, n_members=2)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(16, 5)
    reference = torch.optim.Adam(theirs.parameters(), lr=0.01, weight_decay=weight_decay)
    with flat_parameters(ours) as flat:
        opt = FlatAdam(flat, lr=0.01, weight_decay=weight_decay)
        for _ in range(5):
            opt.zero_grad()
            _loss(ours, x).backward()
            opt.step()
            reference.zero_grad()
            _loss(theirs, x).backward()
            reference.step()
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_parameters_own_their_storage_after_flat_training():
    net = EnsembleVAE(5, [8], 2, n_members=2)
    with flat_parameters(net) as flat:
        assert all(p.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
                   for p in net.parameters())
        FlatAdam(flat, lr=0.1).zero_grad()
    pointers = {p.untyped_storage().data_ptr() for p in net.parameters()}
    assert len(pointers) == len(list(net.parameters()))
    assert all(p.grad is None and p.requires_grad for p in net.parameters())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    _loss(net, torch.randn(4, 5)).backward()  # autograd works on them as ordinary parameters
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_flat_adam_without_the_fused_kernel_takes_the_same_steps(monkeypatch):
    import training.nn.flat as flat_module

    torch.manual_seed(0)
    grads = [torch.randn(50) for _ in range(4)]
    results = []
    for kernel in (flat_module._FUSED_ADAM, None):
        monkeypatch.setattr(flat_module, "_FUSED_ADAM", kernel)
        flat = torch.ones(50)
        flat.grad = torch.zeros(50)
        opt = FlatAdam(flat, lr=0.01, weight_decay=0.1)
        for g in grads:
            flat.grad.copy_(g)
            opt.step()
        results.append(flat)
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)
