"""JumpReLU sparse autoencoder (Rajamanoharan et al. 2024, "Jumping Ahead: Improving
Reconstruction Fidelity with JumpReLU Sparse Autoencoders").

Inputs are scaled by one number so that E‖x_n‖² = d_in (as for :mod:`.topk`). Each latent j has
a threshold θ_j > 0, learnt through its logarithm (θ = exp(log_threshold), so it stays positive)::

    pre  = (x_n − b_dec) @ W_enc + b_enc
    z    = JumpReLU_θ(pre) = pre · H(pre − θ)          H the Heaviside step
    x̂_n  = z @ W_dec + b_dec                           rows of W_dec kept at unit norm
    mse  = mean over tokens and dimensions of (x̂_n − x_n)²
    l0   = mean over tokens of Σ_j H(pre_j − θ_j)      the L0 itself, not a proxy
    loss = mse + l0_coeff · l0

H has zero derivative almost everywhere, so θ is trained with straight-through estimators whose
pseudo-derivatives use a rectangle kernel K(u) = [−½ < u < ½] of bandwidth ε (``bandwidth``)::

    ∂ JumpReLU_θ(p) / ∂θ  := −(θ / ε) · K((p − θ) / ε)
    ∂ H(p − θ) / ∂θ       := −(1 / ε) · K((p − θ) / ε)
    ∂ JumpReLU_θ(p) / ∂p   = H(p − θ)          (exact; the L0 term sends no gradient to p)

i.e. only pre-activations within ε/2 of a threshold move it, pushed up by the L0 term and
pulled by the reconstruction. This is the paper's (and DeepMind's) estimator; SAELens's
``jumprelu_sparsity_loss_mode="step"`` with ``jumprelu_ste_to_input=False``. Because θ > 0,
``pre · H(pre − θ)`` equals SAELens's ``ReLU(pre) · [pre > θ]``, and the SAE is saved as SAELens
``jumprelu`` with its ``threshold`` [d_sae].

Initialisation: decoder rows random unit vectors, encoder their transpose, b_enc = 0, b_dec the
mean input, θ = ``threshold_init`` for every latent. Since Adam moves ``log θ`` by about ``lr``
per step, the thresholds change by a factor of about exp(lr · steps) at most; start them near
the scale where they should end (pre-activations are O(1) after the input scaling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from musinterp.sae.base import (
    LossOutput,
    SparseAutoencoder,
    check_dimensions,
    zero_adam_moments,
)


def rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLUFunction(torch.autograd.Function):
    """``pre · H(pre − θ)`` with the straight-through pseudo-derivative for θ."""

    @staticmethod
    def forward(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        pre, threshold, bandwidth = inputs
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = (pre > threshold).to(pre.dtype) * grad_output
        grad_threshold = (-(threshold / eps) * rectangle((pre - threshold) / eps) * grad_output).sum(dim=0)
        return grad_pre, grad_threshold, None


class _StepFunction(_JumpReLUFunction):
    """``H(pre − θ)`` with the straight-through pseudo-derivative for θ (none for pre).

    Saves the same context as :class:`_JumpReLUFunction`; only forward and backward differ."""

    @staticmethod
    def forward(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_threshold = (-(1.0 / eps) * rectangle((pre - threshold) / eps) * grad_output).sum(dim=0)
        return None, grad_threshold, None


def jumprelu(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    return _JumpReLUFunction.apply(pre, threshold, bandwidth)


def step(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    return _StepFunction.apply(pre, threshold, bandwidth)


@dataclass
class JumpReLUConfig:
    """The jumprelu settings (every field but ``d_in``, ``d_sae``), their defaults and checks."""

    d_in: int
    d_sae: int
    l0_coeff: float = 1e-2  # weight of the L0 penalty
    bandwidth: float = 0.05  # ε, the width of the straight-through kernel
    threshold_init: float = 0.5  # initial θ of every latent

    def __post_init__(self):
        check_dimensions(self.d_in, self.d_sae)
        if not self.l0_coeff >= 0:
            raise ValueError(f"l0_coeff must be >= 0, got {self.l0_coeff}")
        for name in ("bandwidth", "threshold_init"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number, got {value}")


class JumpReLUSAE(SparseAutoencoder):
    """JumpReLU SAE with per-latent learnt thresholds and an L0 penalty."""

    config_class = JumpReLUConfig
    saelens_architecture = "jumprelu"
    input_normalisation = "scalar"
    apply_b_dec_to_input = True
    loss_parts = ("mse", "l0")

    def __init__(
        self,
        cfg: JumpReLUConfig,
        generator: torch.Generator | None = None,
        input_mean: torch.Tensor | None = None,
    ):
        super().__init__()
        self.cfg = cfg
        self._init_tied(generator, 0.0, input_mean, decoder_bias=True)
        self.log_threshold = nn.Parameter(torch.full((cfg.d_sae,), math.log(cfg.threshold_init)))

    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return jumprelu(pre, self.threshold, self.cfg.bandwidth)

    def training_loss(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None) -> LossOutput:
        pre = self.pre_activations(x)
        threshold = self.threshold
        z = jumprelu(pre, threshold, self.cfg.bandwidth)
        x_hat = self.decode(z)
        mse = F.mse_loss(x_hat, x)
        l0 = step(pre, threshold, self.cfg.bandwidth).sum(dim=-1).mean()
        loss = mse + self.cfg.l0_coeff * l0
        return LossOutput(loss, {"mse": mse.detach(), "l0": l0.detach()}, z.detach())

    @torch.no_grad()
    def _reset_latents(self, latents: torch.Tensor, optimizer) -> None:
        self.log_threshold[latents] = math.log(self.cfg.threshold_init)
        zero_adam_moments(optimizer, self.log_threshold, (latents,))

    def saelens_export(self):
        tensors = self._export_tensors()
        tensors["threshold"] = self.threshold.detach().cpu().clone()
        return self.saelens_architecture, tensors, {}
