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
points its way, which keeps the initial L0 low.

Dead latents: the trainer can revive them by resampling (Anthropic's recipe, formula in
:mod:`musinterp.sae.base`), every ``resample_every`` steps in the first half of training. It is
*off* by default because the S1 study trained without it and reports dead latents as a finding;
:data:`S1_PRESET` is that study's recipe as :func:`musinterp.sae.trainer.train_sae` settings.
A run that wants fewer dead latents sets ``resample_every``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from musinterp.sae.base import LossOutput, SparseAutoencoder, check_dimensions

# The S1 recipe (DESIGN.md, "SAE engine"), with width 4 · d_in (512 → 2048 in the study): Adam at a
# constant learning rate, no warm-up or decay, no resampling.
S1_PRESET = {
    "arch": "relu_l1",
    "l1_coeff": 1e-3,
    "lr": 1e-3,
    "batch_size": 2048,
    "epochs": 2,
    "warmup_fraction": 0.0,
    "decay_fraction": 0.0,
    "resample_every": None,
}


@dataclass
class ReluL1Config:
    """The relu_l1 settings (every field but ``d_in``, ``d_sae``), their defaults and checks."""

    d_in: int
    d_sae: int
    l1_coeff: float = 1e-3  # weight of the L1 penalty
    encoder_bias_init: float = -1.0  # initial value of every b_enc entry

    def __post_init__(self):
        check_dimensions(self.d_in, self.d_sae)
        if not self.l1_coeff >= 0:
            raise ValueError(f"l1_coeff must be >= 0, got {self.l1_coeff}")
        if not math.isfinite(self.encoder_bias_init):
            raise ValueError(f"encoder_bias_init must be a finite number, got {self.encoder_bias_init}")


class ReluL1SAE(SparseAutoencoder):
    """ReLU SAE over z-scored inputs; decoder rows kept at unit norm; no decoder bias."""

    config_class = ReluL1Config
    saelens_architecture = "standard"
    input_normalisation = "per_dimension"
    apply_b_dec_to_input = False
    loss_parts = ("mse", "l1")

    def __init__(
        self,
        cfg: ReluL1Config,
        generator: torch.Generator | None = None,
        input_mean: torch.Tensor | None = None,
    ):
        super().__init__()
        self.cfg = cfg
        # z-scored inputs have mean 0, so input_mean is not needed (and there is no b_dec).
        self._init_tied(generator, cfg.encoder_bias_init, None, decoder_bias=False)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return F.relu(pre)

    def training_loss(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None) -> LossOutput:
        """Total loss, its parts (detached) and the latents, for normalised inputs ``[n, d_in]``."""
        x_hat, z = self(x)
        mse = F.mse_loss(x_hat, x)  # mean over tokens and dimensions
        l1 = z.sum(dim=1).mean()  # z >= 0 after the ReLU, so this is Σ_j |z_j| without abs/sign passes
        loss = mse + self.cfg.l1_coeff * l1
        return LossOutput(loss, {"mse": mse.detach(), "l1": l1.detach()}, z.detach())

    def saelens_export(self):
        """SAELens's standard SAE computes ``ReLU((x - b_dec·apply_b_dec_to_input) @ W_enc + b_enc)``
        and ``z @ W_dec + b_dec``; ours is that with ``b_dec = 0``."""
        return super().saelens_export()
