"""One training step of the dense ensembles with their gradients written out by hand.

A table network is small (tens to a few hundred units a layer), so a step spends most of its time
on dispatching operations and walking autograd's graph rather than on arithmetic: with autograd,
a three-member VAE step is ~40 forward operations and ~70 backward nodes. The gradients of these
networks are short to write down (a linear layer's are two matrix products and a sum; a ReLU's
is a mask), so this module computes the loss and every gradient directly, in about half the
operations and with no graph, writing each gradient into the parameter's ``.grad`` in place
(``out=``). The losses are the Detector's (``BaseDetector._loss``); a test checks every gradient
against autograd's.

Covered (:func:`supports`): :class:`~training.nn.dense.EnsembleAE` and
:class:`~training.nn.dense.EnsembleVAE` with ReLU activations and no dropout (the defaults).
Anything else trains through autograd.

Notation for the VAE (member m, record i, feature j, code unit c; ``w`` the weight of each
(member, record) pair divided by the weights' sum, or 1/(M n) without weights):
    loss = Σ_mi w_mi [NLL_mi + β KL_mi]
    NLL_mi = ½ Σ_j ((x̂_mij − x_ij)² exp(−s_mj) + s_mj + log 2π),  s = max(s_raw, s_min)
    KL_mi = ½ Σ_c (exp(v_mic) + μ_mic² − 1 − v_mic),  v = clamp(v_raw, −20, 10)
    z = μ + ε exp(v / 2)
so ∂/∂x̂ = w (x̂ − x) exp(−s); ∂/∂s_mj = ½ Σ_i w_mi (1 − (x̂ − x)² exp(−s)) where s_raw ≥ s_min;
∂/∂μ = ∂/∂z + β w μ; ∂/∂v = ∂/∂z ε ½ exp(v / 2) + β w ½ (exp(v) − 1) inside the clamp.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from training.nn.dense import (
    MIN_DECODER_LOGVAR,
    POSTERIOR_LOGVAR_RANGE,
    EnsembleAE,
    EnsembleLinear,
    EnsembleVAE,
)

LOGVAR_MIN, LOGVAR_MAX = POSTERIOR_LOGVAR_RANGE


def supports(net: nn.Module) -> bool:
    """Whether :class:`DenseStep` covers this network: a dense ensemble of linear layers and
    ReLUs only."""
    if type(net) not in (EnsembleAE, EnsembleVAE):
        return False
    chains = [net.encoder, net.decoder]
    return all(isinstance(layer, (EnsembleLinear, nn.ReLU)) for c in chains for layer in c)


class _Layer:
    """One linear layer's tensors, looked up once: weight (M, a, b), its transpose, bias
    (M, 1, b), their gradients, and whether a ReLU follows."""

    def __init__(self, layer: EnsembleLinear, relu: bool):
        self.weight, self.bias, self.relu = layer.weight, layer.bias, relu
        self.weight_t = layer.weight.transpose(1, 2)
        self.weight_grad, self.bias_grad = layer.weight.grad, layer.bias.grad


def _layers(chain: nn.Sequential) -> list[_Layer]:
    layers = list(chain)
    return [_Layer(la, i + 1 < len(layers) and isinstance(layers[i + 1], nn.ReLU))
            for i, la in enumerate(layers) if isinstance(la, EnsembleLinear)]


def _forward(layers: list[_Layer], h: torch.Tensor) -> list[torch.Tensor]:
    """The chain's input and every linear layer's output (after its ReLU, if any)."""
    outs = [h]
    for layer in layers:
        h = torch.baddbmm(layer.bias, h, layer.weight)
        if layer.relu:
            h = h.relu_()
        outs.append(h)
    return outs


def _backward(layers: list[_Layer], outs: list[torch.Tensor], grad: torch.Tensor,
              input_grad: bool) -> torch.Tensor | None:
    """Write the gradients of the chain's parameters, given the gradient of its output; returns
    the gradient of its input when ``input_grad``."""
    for i in reversed(range(len(layers))):
        layer = layers[i]
        if layer.relu:
            grad = torch.ops.aten.threshold_backward(grad, outs[i + 1], 0.0)
        torch.bmm(outs[i].transpose(1, 2), grad, out=layer.weight_grad)
        torch.sum(grad, dim=1, keepdim=True, out=layer.bias_grad)
        if i > 0 or input_grad:
            grad = torch.bmm(grad, layer.weight_t)
    return grad if input_grad else None


def _pair_weights(weights: torch.Tensor | None, shape: tuple[int, int]
                  ) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    """The weight of every (member, record) pair in the batch mean, (M, n, 1), and its sum over
    the records, (M, 1); without weights, the one weight every pair has and n times it (a
    number: no tensor to build or multiply by)."""
    if weights is None:
        w = 1.0 / (shape[0] * shape[1])
        return w, shape[1] * w
    w = (weights / weights.sum().clamp(min=1.0)).unsqueeze(-1)
    return w, w.sum(1)


class DenseStep:
    """The training loss of a batch and its gradients, for one network that :func:`supports`
    covers. Built once per training run, after the parameters have their ``.grad`` tensors (see
    :func:`training.nn.flat.flat_parameters`): it keeps views of the parameters and gradients,
    which the optimiser updates in place.

    Args:
        net: the ensemble.
        beta: the KL term's weight (VAEs).
    """

    def __init__(self, net: nn.Module, beta: float):
        self.members, self.beta = net.n_members, beta
        self.encoder, self.decoder = _layers(net.encoder), _layers(net.decoder)
        self.variational = isinstance(net, EnsembleVAE)
        if self.variational:
            self.heads = [_Layer(net.mu, False), _Layer(net.logvar, False)]
            self.s_raw = net.decoder_logvar_raw

    @torch.no_grad()
    def __call__(self, x_in: torch.Tensor, x: torch.Tensor, weights: torch.Tensor | None
                 ) -> torch.Tensor:
        """The Detector's training loss of one batch, with every parameter's gradient written
        into its ``.grad``.

        Args:
            x_in: (n, d) inputs shared by the members, or (M, n, d) one batch per member
                (``x`` with noise, for a denoising objective).
            x: the reconstruction targets, shaped as ``x_in``.
            weights: optional (M, n) 0/1 weights of the (member, record) pairs.
        """
        m, beta, d = self.members, self.beta, x.shape[-1]
        w, w_rows = _pair_weights(weights, (m, x.shape[-2]))
        enc = _forward(self.encoder, x_in if x_in.dim() == 3 else x_in.expand(m, *x_in.shape))
        if not self.variational:
            dec = _forward(self.decoder, enc[-1])
            diff = dec[-1] - x
            loss = (diff.square() * w).sum() / d
            grad_out = diff.mul_(w * (2.0 / d))
            _backward(self.encoder, enc, _backward(self.decoder, dec, grad_out, True), False)
            return loss
        h = enc[-1]
        mu_head, v_head = self.heads
        mu = torch.baddbmm(mu_head.bias, h, mu_head.weight)
        v_raw = torch.baddbmm(v_head.bias, h, v_head.weight)
        v = v_raw.clamp(LOGVAR_MIN, LOGVAR_MAX)
        std = v.mul(0.5).exp_()
        eps = torch.randn_like(mu)
        dec = _forward(self.decoder, torch.addcmul(mu, eps, std))
        s_raw = self.s_raw
        s = s_raw.clamp(min=MIN_DECODER_LOGVAR)
        diff = dec[-1] - x
        weighted = diff * torch.exp(-s).unsqueeze(1)  # (x̂ − x) exp(−s)
        sq = diff.mul_(weighted)  # (x̂ − x)² exp(−s), in diff's memory
        var = std.square()
        per = 0.5 * (sq.sum(-1) + s.sum(-1, keepdim=True) + d * math.log(2 * math.pi)
                     + beta * (var + mu.square() - 1.0 - v).sum(-1))
        loss = (per * (w if isinstance(w, float) else w.squeeze(-1))).sum()
        # decoder log-variances
        g_s = 0.5 * (w_rows - (sq * w).sum(1))
        torch.mul(g_s, s_raw >= MIN_DECODER_LOGVAR, out=s_raw.grad)
        # decoder, then the code's two heads
        g_z = _backward(self.decoder, dec, weighted.mul_(w), True)
        g_mu = g_z.add(mu * w, alpha=beta)
        g_v = (g_z * eps * std + beta * w * (var - 1.0)).mul_(0.5)
        g_v.masked_fill_((v_raw < LOGVAR_MIN) | (v_raw > LOGVAR_MAX), 0.0)
        h_t = h.transpose(1, 2)
        for head, g in ((mu_head, g_mu), (v_head, g_v)):
            torch.bmm(h_t, g, out=head.weight_grad)
            torch.sum(g, dim=1, keepdim=True, out=head.bias_grad)
        g_h = torch.baddbmm(torch.bmm(g_mu, mu_head.weight_t), g_v, v_head.weight_t)
        _backward(self.encoder, enc, g_h, False)
        return loss
