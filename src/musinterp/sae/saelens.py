"""SAE directories in the layout SAELens's ``SAE.load_from_disk`` reads (checked against sae-lens 6.x).

A directory holds ``cfg.json`` and ``sae_weights.safetensors``::

    cfg.json   {"d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input",
                "normalize_activations": "none", "reshape_activations": "none",
                ["k" for topk,] "metadata": {...}, "architecture": "standard" | "topk" | "jumprelu"}
    tensors    W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in],
               plus threshold [d_sae] for jumprelu; nothing else.

SAELens's inference equations, which :class:`LoadedSAE` follows::

    pre = (x - b_dec · apply_b_dec_to_input) @ W_enc + b_enc
    z   = ReLU(pre)                                   standard
        = ReLU of the k largest entries of pre, 0 elsewhere           topk
        = ReLU(pre) · [pre > threshold]               jumprelu
    x̂   = z @ W_dec + b_dec

``metadata.sae_lens_version`` says which cfg layout this is: SAELens sends configs without it (or
older than 6.0) through its legacy converter, which drops the nested metadata, so we declare the
6.x layout we write (:data:`SAELENS_FORMAT_VERSION`). These files are written by musinterp, not
by SAELens; ``metadata.provenance`` says how they were made.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from musinterp.io import atomic_path

log = logging.getLogger(__name__)

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
SAELENS_FORMAT_VERSION = "6.0.0"
ARCHITECTURES = ("standard", "topk", "jumprelu")
DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
REQUIRED_METADATA = ("subject", "site", "provenance")


class SAEFormatError(ValueError):
    """An SAE directory (or what is about to be written as one) breaks the file contract."""


def saelens_cfg(
    architecture: str,
    d_in: int,
    d_sae: int,
    *,
    subject: str,
    site: str,
    provenance: dict[str, Any],
    device: str = "cpu",
    dtype: str = "float32",
    k: int | None = None,
) -> dict[str, Any]:
    """The ``cfg.json`` content for an SAE whose input normalisation is already folded in."""
    cfg: dict[str, Any] = {
        "d_in": int(d_in),
        "d_sae": int(d_sae),
        "dtype": dtype,
        "device": device,
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
    }
    if architecture == "topk":
        if k is None:
            raise SAEFormatError("a topk SAE needs k")
        cfg["k"] = int(k)
        cfg["rescale_acts_by_decoder_norm"] = False
    cfg["metadata"] = {
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        "sae_lens_training_version": None,
        # SAELens attaches an SAE to a model by these two; here the "model" is the subject and the
        # hook is the activation site.
        "model_name": subject,
        "hook_name": site,
        "hook_head_index": None,
        "subject": subject,
        "site": site,
        "provenance": provenance,
    }
    cfg["architecture"] = architecture
    return cfg


@torch.no_grad()
def fold_input_normalisation(
    tensors: dict[str, torch.Tensor],
    mean: torch.Tensor,
    std: torch.Tensor,
    apply_b_dec_to_input: bool = False,
) -> dict[str, torch.Tensor]:
    """Tensors that act on raw ``x`` exactly as ``tensors`` act on ``x_n = (x - mean) / std``.

    With ``pre = (x_n - a·b_dec) @ W_enc + b_enc`` and ``x̂ = std·(z @ W_dec + b_dec) + mean``:
    ``W_enc' = W_enc / std[:, None]``, ``b_enc' = b_enc - (mean/std + a·b_dec) @ W_enc``,
    ``W_dec' = W_dec · std``, ``b_dec' = std·b_dec + mean``, and ``apply_b_dec_to_input`` becomes
    False. Latents (hence ``threshold``) are unchanged. Computed in float64, returned as float32.
    """
    f64 = {name: t.detach().to(torch.float64).cpu() for name, t in tensors.items()}
    mean = mean.detach().to(torch.float64).cpu()
    std = std.detach().to(torch.float64).cpu()
    if bool((std <= 0).any()):
        raise ValueError("std must be positive in every dimension to fold the normalisation")
    W_enc, b_enc, W_dec, b_dec = f64["W_enc"], f64["b_enc"], f64["W_dec"], f64["b_dec"]
    shift = mean / std + (b_dec if apply_b_dec_to_input else 0.0)
    folded = dict(f64)
    folded["W_enc"] = W_enc / std[:, None]
    folded["b_enc"] = b_enc - shift @ W_enc
    folded["W_dec"] = W_dec * std[None, :]
    folded["b_dec"] = b_dec * std + mean
    return {name: t.to(torch.float32).contiguous() for name, t in folded.items()}


def _expected_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if cfg["architecture"] == "jumprelu":
        shapes["threshold"] = (d_sae,)
    return shapes


def _check_cfg(cfg: Any, where: str, require_provenance: bool) -> None:
    def fail(problem: str):
        raise SAEFormatError(f"{where}: {problem}")

    if not isinstance(cfg, dict):
        fail(f"expected a JSON object, got {type(cfg).__name__}")
    for key in ("architecture", "d_in", "d_sae", "dtype", "apply_b_dec_to_input", "normalize_activations"):
        if key not in cfg:
            fail(f"missing field {key!r}")
    if cfg["architecture"] not in ARCHITECTURES:
        fail(f"architecture {cfg['architecture']!r} is not one of {list(ARCHITECTURES)}")
    for key in ("d_in", "d_sae"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            fail(f"{key} must be a positive integer, got {cfg[key]!r}")
    if cfg["dtype"] not in DTYPES:
        fail(f"dtype {cfg['dtype']!r} is not one of {list(DTYPES)}")
    if not isinstance(cfg["apply_b_dec_to_input"], bool):
        fail(f"apply_b_dec_to_input must be true or false, got {cfg['apply_b_dec_to_input']!r}")
    if cfg["normalize_activations"] != "none":
        fail(
            f"normalize_activations is {cfg['normalize_activations']!r}; the contract requires "
            "'none' with any input scaling folded into the weights"
        )
    if cfg.get("reshape_activations", "none") != "none":
        fail(f"reshape_activations {cfg['reshape_activations']!r} is not supported (expected 'none')")
    if cfg["architecture"] == "topk":
        k = cfg.get("k")
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= cfg["d_sae"]:
            fail(f"a topk SAE needs an integer k in 1..d_sae={cfg['d_sae']}, got {k!r}")
        if cfg.get("rescale_acts_by_decoder_norm", False):
            fail("rescale_acts_by_decoder_norm=true is not supported")
    metadata = cfg.get("metadata", {})
    if not isinstance(metadata, dict):
        fail(f"metadata must be a JSON object, got {type(metadata).__name__}")
    if require_provenance:
        missing = [key for key in REQUIRED_METADATA if key not in metadata]
        if missing:
            fail(f"metadata lacks {missing}")


def _check_tensors(cfg: dict[str, Any], tensors: dict[str, torch.Tensor], where: str) -> None:
    expected = _expected_shapes(cfg)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise SAEFormatError(
            f"{where}: tensors must be exactly {sorted(expected)} for architecture "
            f"{cfg['architecture']!r}; missing {missing}, unexpected {extra}"
        )
    dtype = DTYPES[cfg["dtype"]]
    for name, shape in expected.items():
        t = tensors[name]
        if tuple(t.shape) != shape:
            raise SAEFormatError(f"{where}: {name} has shape {tuple(t.shape)}, expected {shape}")
        if t.dtype != dtype:
            raise SAEFormatError(f"{where}: {name} is {t.dtype}, but cfg.json says dtype {cfg['dtype']!r}")
        if not bool(torch.isfinite(t).all()):
            raise SAEFormatError(f"{where}: {name} contains NaN or infinite values")


def save_sae(sae_dir: str | os.PathLike, tensors: dict[str, torch.Tensor], cfg: dict[str, Any]) -> Path:
    """Check ``tensors`` and ``cfg`` against the contract, then write both files into ``sae_dir``.

    Each file is written atomically; to make the whole directory appear at once, call this on a
    directory from :func:`musinterp.io.atomic_dir` (as the trainer does).
    """
    sae_dir = Path(sae_dir)
    _check_cfg(cfg, f"{sae_dir / CFG_FILENAME} (about to be written)", require_provenance=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    _check_tensors(cfg, tensors, f"{sae_dir / WEIGHTS_FILENAME} (about to be written)")
    sae_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(sae_dir / WEIGHTS_FILENAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    with atomic_path(sae_dir / CFG_FILENAME) as tmp:
        tmp.write_text(json.dumps(cfg, indent=2) + "\n")
    return sae_dir


@dataclass
class LoadedSAE:
    """An SAE read from a directory; ``encode``/``decode`` follow SAELens's equations."""

    path: Path
    cfg: dict[str, Any]
    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    threshold: torch.Tensor | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return self.cfg["architecture"]

    @property
    def d_in(self) -> int:
        return self.cfg["d_in"]

    @property
    def d_sae(self) -> int:
        return self.cfg["d_sae"]

    @property
    def subject(self) -> str | None:
        return self.metadata.get("subject")

    @property
    def site(self) -> str | None:
        return self.metadata.get("site")

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
        if self.threshold is not None:
            out["threshold"] = self.threshold
        return out

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents ``[..., d_sae]`` for activations ``[..., d_in]``."""
        x = torch.as_tensor(x).to(self.W_enc.dtype)
        if x.shape[-1] != self.d_in:
            raise ValueError(f"{self.path}: SAE expects inputs of size {self.d_in}, got {x.shape[-1]}")
        if self.cfg["apply_b_dec_to_input"]:
            x = x - self.b_dec
        pre = x @ self.W_enc + self.b_enc
        if self.architecture == "standard":
            return torch.relu(pre)
        if self.architecture == "topk":
            values, indices = torch.topk(pre, k=self.cfg["k"], dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter_(-1, indices, values.relu())
        return torch.relu(pre) * (pre > self.threshold).to(pre.dtype)  # jumprelu

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``[..., d_in]`` from latents ``[..., d_sae]``."""
        return torch.as_tensor(z).to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    __call__ = forward


def load_sae(sae_dir: str | os.PathLike, device: str = "cpu") -> LoadedSAE:
    """Read and check an SAE directory; raise :class:`SAEFormatError` naming the faulty file."""
    sae_dir = Path(sae_dir)
    cfg_path, weights_path = sae_dir / CFG_FILENAME, sae_dir / WEIGHTS_FILENAME
    for path in (cfg_path, weights_path):
        if not path.is_file():
            raise SAEFormatError(
                f"{path}: missing; an SAE directory needs {CFG_FILENAME} and {WEIGHTS_FILENAME}"
            )
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise SAEFormatError(f"{cfg_path}: not valid JSON ({err})") from None
    _check_cfg(cfg, str(cfg_path), require_provenance=False)
    try:
        tensors = load_file(str(weights_path), device=device)
    except (SafetensorError, OSError, ValueError) as err:
        raise SAEFormatError(f"{weights_path}: cannot be read as safetensors ({err})") from None
    _check_tensors(cfg, tensors, str(weights_path))
    sae = LoadedSAE(
        path=sae_dir,
        cfg=cfg,
        W_enc=tensors["W_enc"],
        b_enc=tensors["b_enc"],
        W_dec=tensors["W_dec"],
        b_dec=tensors["b_dec"],
        threshold=tensors.get("threshold"),
        metadata=cfg.get("metadata", {}),
    )
    log.debug("loaded %s SAE %d->%d from %s", sae.architecture, sae.d_in, sae.d_sae, sae_dir)
    return sae
