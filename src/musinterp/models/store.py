"""Model directories: ``model.pt`` (``{"family", "config", "state_dict"}``, loadable with
``torch.load(weights_only=True)``) and ``model.json`` (hyperparameters, vocab, loss curves,
provenance). :func:`load` reads any registered family back."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..io import atomic_path, write_json
from ..registry import get_family


def build(family: str, **config):
    """A fresh model of ``family`` from config fields (``vocab_size`` included)."""
    spec = get_family(family)
    return spec.model_class()(spec.config(**config))


def save(model, out_dir: str | Path, meta: dict) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "model.pt") as tmp:
        torch.save(
            {"family": model.family, "config": model.config.to_dict(), "state_dict": model.state_dict()}, tmp
        )
    write_json(out_dir / "model.json", {"family": model.family, "config": model.config.to_dict(), **meta})


def load(model_dir: str | Path):
    """Return ``(model, meta)`` for a model directory; the model is in eval mode."""
    model_dir = Path(model_dir)
    pt, meta_path = model_dir / "model.pt", model_dir / "model.json"
    for path in (pt, meta_path):
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing (is {model_dir} a musinterp model directory?)")
    checkpoint = torch.load(pt, weights_only=True, map_location="cpu")
    model = build(checkpoint["family"], **checkpoint["config"])
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    return model, json.loads(meta_path.read_text())


def write_samples(model, vocab, path: str | Path, n_samples: int, temperature: float, seed: int) -> list[str]:
    """Sample ``n_samples`` pieces from ``<s>`` (seeded) and write them, one paragraph each."""
    tokens = list(vocab)
    bos, eos = tokens.index("<s>"), tokens.index("</s>")
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(n_samples):
        ids = model.generate([bos], eos, temperature=temperature, generator=generator)
        samples.append(" ".join(tokens[i] for i in ids[1:] if i != eos))
    with atomic_path(path) as tmp:
        tmp.write_text("\n\n".join(samples) + "\n")
    return samples
