"""BatchTopK sparse autoencoder (Bussmann, Leask, Nanda 2024, "BatchTopK Sparse Autoencoders").

Like :mod:`.topk` (same parameters, scalar input normalisation, unit-norm decoder rows, MSE +
AuxK loss), but the top-k is taken over the whole batch instead of per token: for a batch of n
tokens, the ``k · n`` largest entries of ``ReLU(pre)`` [n, d_sae] survive, so the *average* L0 is
k while single tokens may use more or fewer latents::

    training:   z = BatchTopK_{k·n}(ReLU(pre))
    threshold:  θ ← (1 − r) · θ + r · min{z > 0}        after every training batch (r = threshold_rate;
                                                        the first batch sets θ directly)
    inference:  z = ReLU(pre) · [pre > θ]               a JumpReLU with one threshold for all latents

Inference cannot depend on the other tokens of a batch, so the estimated θ, the smallest
activation BatchTopK typically keeps, replaces the batch selection (the paper estimates it as
an average of the per-batch minima; an exponential moving average is what SAELens does). The
SAE is saved, as SAELens saves it, as a ``jumprelu`` SAE whose ``threshold`` tensor [d_sae] is
filled with θ. The trainer's held-out metrics use the inference rule, so they describe the saved
SAE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from musinterp.sae.topk import TopKConfig, TopKSAE


@dataclass
class BatchTopKConfig(TopKConfig):
    """The topk settings plus the rate of the global threshold's moving average."""

    threshold_rate: float = 0.01  # r in θ ← (1 − r) · θ + r · min{z > 0}

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.threshold_rate <= 1:
            raise ValueError(f"threshold_rate must be in (0, 1], got {self.threshold_rate}")


class BatchTopKSAE(TopKSAE):
    """BatchTopK SAE: batch-level top-k in training, a global JumpReLU threshold at inference."""

    config_class = BatchTopKConfig
    saelens_architecture = "jumprelu"

    threshold: torch.Tensor
    threshold_updates: torch.Tensor

    def __init__(
        self,
        cfg: BatchTopKConfig,
        generator: torch.Generator | None = None,
        input_mean: torch.Tensor | None = None,
    ):
        super().__init__(cfg, generator=generator, input_mean=input_mean)
        # float64 so that r-sized updates are not lost to rounding; buffers travel in state_dict.
        self.register_buffer("threshold", torch.zeros((), dtype=torch.float64))
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.int64))

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        if self.training:
            acts = pre.relu()
            flat = acts.flatten()
            n_keep = min(self.cfg.k * acts.shape[:-1].numel(), flat.numel())
            values, indices = torch.topk(flat, n_keep, sorted=False)
            return torch.zeros_like(flat).scatter(-1, indices, values).reshape(acts.shape)
        return pre.relu() * (pre > self.threshold.to(pre.dtype)).to(pre.dtype)

    @torch.no_grad()
    def update_threshold(self, z: torch.Tensor) -> None:
        """Move θ towards the smallest positive activation kept in this batch."""
        kept = z[z > 0]
        if kept.numel() == 0:
            return
        smallest = kept.min().to(torch.float64)
        if int(self.threshold_updates) == 0:
            self.threshold.copy_(smallest)
        else:
            rate = self.cfg.threshold_rate
            self.threshold.mul_(1 - rate).add_(rate * smallest)
        self.threshold_updates += 1

    def training_loss(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None):
        out = super().training_loss(x, dead_mask)
        if self.training:
            self.update_threshold(out.latents)
        return out

    def saelens_export(self):
        tensors = self._export_tensors()
        tensors["threshold"] = torch.full((self.cfg.d_sae,), float(self.threshold), dtype=torch.float32)
        return self.saelens_architecture, tensors, {}
