"""Model families and their checkpoints.

A model directory holds ``model.pt`` (``{"family", "config", "state_dict"}``, loadable with
``torch.load(weights_only=True)``) and ``model.json`` (hyperparameters, vocab, loss curves,
provenance). :func:`load` reads any family back.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from .. import PRODUCER
from ..io import atomic_path, write_json
from .folkrnn import FolkRNN, FolkRNNConfig
from .training import TrainConfig, train_lm

log = logging.getLogger(__name__)

FAMILIES = {"folkrnn": (FolkRNN, FolkRNNConfig)}


def build(family: str, **config):
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(FAMILIES)}")
    model_cls, config_cls = FAMILIES[family]
    return model_cls(config_cls(**config))


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


def write_samples(model, vocab: list[str], path: str | Path, n_samples: int, temperature: float,
                  seed: int) -> list[str]:
    """Sample ``n_samples`` tunes from ``<s>`` (seeded) and write them, one paragraph each."""
    stoi = {t: i for i, t in enumerate(vocab)}
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(n_samples):
        ids = model.generate([stoi["<s>"]], stoi["</s>"], temperature=temperature, generator=generator)
        samples.append(" ".join(vocab[i] for i in ids[1:] if i != stoi["</s>"]))
    with atomic_path(path) as tmp:
        tmp.write_text("\n\n".join(samples) + "\n")
    return samples


def train_model(
    family: str,
    corpus_dir: str | Path,
    out_dir: str | Path,
    model_params: dict,
    train_params: dict,
    n_samples: int = 5,
    temperature: float = 1.0,
) -> dict:
    """Train a reference model of ``family`` on a corpus; write model.pt, model.json, samples.txt."""
    from ..corpus.store import load_corpus

    corpus = load_corpus(corpus_dir)
    stoi = {t: i for i, t in enumerate(corpus.vocab)}
    bos, eos = stoi["<s>"], stoi["</s>"]
    cfg = TrainConfig(**train_params)
    torch.manual_seed(cfg.seed)
    model = build(family, vocab_size=len(corpus.vocab), **model_params)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    result = train_lm(
        model,
        [corpus.tunes[i] for i in corpus.indices("train")],
        [corpus.tunes[i] for i in corpus.indices("heldout")],
        bos,
        eos,
        cfg,
        checkpoint_path=out_dir / "checkpoint.pt",
    )
    seconds = time.time() - t0

    write_samples(model, corpus.vocab, out_dir / "samples.txt", n_samples, temperature, cfg.seed)

    meta = {
        "vocab": corpus.vocab,
        "corpus": str(corpus_dir),
        "corpus_name": corpus.name,
        "train_config": vars(cfg),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "training_seconds": seconds,
        "sampling": {"n_samples": n_samples, "temperature": temperature, "seed": cfg.seed},
        "producer": PRODUCER,
        **result,
    }
    save(model, out_dir, meta)
    (out_dir / "checkpoint.pt").unlink(missing_ok=True)  # only needed to resume an unfinished run
    log.info("wrote %s (best held-out loss %.4f at epoch %d)", out_dir, result["best_valid_loss"], result["best_epoch"])
    return meta
