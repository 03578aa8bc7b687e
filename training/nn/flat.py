"""Training on one flat parameter tensor: the small networks of this package spend most of a
gradient step on dispatching operations rather than on arithmetic, and a parameter-wise
optimiser dispatches a few operations per parameter tensor. With every parameter a view of one
flat tensor (and every gradient a view of one flat gradient), an optimiser step is a handful of
operations whatever the network, and zeroing the gradients is one fill.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def flat_parameters(module: torch.nn.Module) -> Iterator[torch.Tensor]:
    """Make every trainable parameter of ``module`` a view of one flat tensor, and its gradient
    a view of one flat gradient, while the block runs; yields the flat tensor, whose ``grad`` is
    the flat gradient. Autograd accumulates into the gradient views in place (they must not be
    set to None). Afterwards each parameter owns its storage again and has no gradient."""
    params = [q for q in module.parameters() if q.requires_grad]
    flat = torch.cat([q.detach().reshape(-1) for q in params])
    flat.grad = torch.zeros_like(flat)
    offset = 0
    for q in params:
        q.data = flat[offset : offset + q.numel()].view_as(q)
        q.grad = flat.grad[offset : offset + q.numel()].view_as(q)
        offset += q.numel()
    try:
        yield flat
    finally:
        for q in params:
            q.data = q.data.clone()
            q.grad = None


class FlatAdam:
    """Adam on one flat tensor (from :func:`flat_parameters`): ``torch.optim.Adam``'s update,
    with its L2 ``weight_decay`` added to the gradient. torch's fused Adam kernel makes one pass
    over the tensor; the optimiser class around it spends ~0.1 ms per step in Python, as much as
    the arithmetic of a whole step of a small table network, so the kernel is called directly.
    Where a torch build lacks it, six tensor operations do the same update (twice the time)."""

    def __init__(self, flat: torch.Tensor, lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.flat, self.lr, self.weight_decay, self.betas, self.eps = (
            flat, lr, weight_decay, betas, eps)
        self.exp_avg = torch.zeros_like(flat)
        self.exp_avg_sq = torch.zeros_like(flat)
        self.steps = torch.zeros(())

    def zero_grad(self) -> None:
        self.flat.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        b1, b2 = self.betas
        self.steps += 1
        if _FUSED_ADAM is not None:
            _FUSED_ADAM([self.flat], [self.flat.grad], [self.exp_avg], [self.exp_avg_sq], [],
                        [self.steps], lr=self.lr, beta1=b1, beta2=b2,
                        weight_decay=self.weight_decay, eps=self.eps, amsgrad=False,
                        maximize=False)
            return
        t = float(self.steps)
        grad = self.flat.grad
        if self.weight_decay:
            grad = grad.add(self.flat, alpha=self.weight_decay)
        self.exp_avg.lerp_(grad, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = self.exp_avg_sq.sqrt().div_(math.sqrt(1 - b2**t)).add_(self.eps)
        self.flat.addcdiv_(self.exp_avg, denom, value=-self.lr / (1 - b1**t))


# torch's fused Adam kernel (what ``torch.optim.Adam(fused=True)`` runs), where the build has it.
_FUSED_ADAM = getattr(torch, "_fused_adam_", None)
