"""ReLU sparse autoencoder with an L1 penalty: the S1 ("Music Interpret") recipe.

The model lives in the *normalised* input space: the trainer z-scores every input dimension with
the training tokens' mean and standard deviation before the SAE sees it, and folds that scaling
into the weights when it saves the SAE (see :func:`musinterp.sae.saelens.fold_input_normalisation`).

    z     = ReLU(x_n @ W_enc + b_enc)          x_n = (x - mean) / std, z >= 0 are the latents
    x̂_n   = z @ W_dec                          no decoder bias: z-scored inputs are centred already
    loss  = mean over elements of (x̂_n - x_n)² + l1_coeff · mean over tokens of Σ_j |z_j|

MSE is averaged over tokens *and* dimensions, so for z-scored inputs predicting 0 scores 1.0 and the
MSE reads like an FVU in the normalised space; the L1 term is a per-token sum averaged over
tokens. The L1 penalty is only meaningful if latents cannot shrink it by growing their decoder
rows, so every row of W_dec (one latent's direction) is rescaled to unit norm after each
optimiser step. The encoder bias starts at −1 so that a latent fires only when its input clearly
points its way, which keeps the initial L0 low. Dead latents are not revived: the S1 recipe has
no resampling, and the trainer reports the dead fraction instead.

Every architecture module offers the same small interface to the shared trainer:
``from_settings``, ``encode``, ``decode``, ``forward``, ``training_loss``,
``after_optimizer_step`` and ``saelens_export``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class ReluL1Config:
    d_in: int
    d_sae: int
    l1_coeff: float = 1e-3
    encoder_bias_init: float = -1.0


class ReluL1SAE(nn.Module):
    """ReLU SAE over z-scored inputs; decoder rows kept at unit norm."""

    saelens_architecture = "standard"

    def __init__(self, cfg: ReluL1Config, generator: torch.Generator | None = None):
        super().__init__()
        if cfg.d_in < 1 or cfg.d_sae < 1:
            raise ValueError(f"d_in and d_sae must be positive, got {cfg.d_in} and {cfg.d_sae}")
        self.cfg = cfg
        # Random unit directions for the decoder; the encoder starts as their transpose, so each
        # latent initially reads the direction it writes (a common, well-behaved start).
        W_dec = torch.randn(cfg.d_sae, cfg.d_in, generator=generator)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.T.clone().contiguous())
        self.b_enc = nn.Parameter(torch.full((cfg.d_sae,), float(cfg.encoder_bias_init)))

    @classmethod
    def from_settings(cls, d_in: int, d_sae: int, settings: Any, generator: torch.Generator | None = None):
        """Build from the trainer's settings (which carry this architecture's hyperparameters)."""
        return cls(ReluL1Config(d_in=d_in, d_sae=d_sae, l1_coeff=settings.l1_coeff), generator)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x @ self.W_enc + self.b_enc)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decode(z), z

    def training_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its parts (detached), for a batch of normalised inputs ``[n, d_in]``."""
        x_hat, z = self(x)
        mse = F.mse_loss(x_hat, x)  # mean over tokens and dimensions
        l1 = z.abs().sum(dim=1).mean()
        loss = mse + self.cfg.l1_coeff * l1
        return loss, {"mse": mse.detach(), "l1": l1.detach()}

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Project the decoder back onto unit-norm rows (one row = one latent's direction)."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def saelens_export(self) -> tuple[str, dict[str, torch.Tensor], dict[str, Any]]:
        """SAELens architecture name, tensors in the normalised space, and extra cfg fields.

        SAELens's standard SAE computes ``ReLU((x - b_dec·apply_b_dec_to_input) @ W_enc + b_enc)``
        and ``z @ W_dec + b_dec``; ours is that with ``b_dec = 0``.
        """
        tensors = {
            "W_enc": self.W_enc.detach().clone(),
            "b_enc": self.b_enc.detach().clone(),
            "W_dec": self.W_dec.detach().clone(),
            "b_dec": torch.zeros(self.cfg.d_in),
        }
        return self.saelens_architecture, tensors, {}
