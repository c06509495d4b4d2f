"""Model families and their checkpoints.

One folder per family (``folkrnn/``: ``spec.py`` for the registry, ``model.py``, importers), the
interface every family implements (``interface.py``), model directories (``store.py``: build,
save, load), the reference-model trainer (``training.py``) and site replacement (``hooks.py``).
This package imports no torch until one of its functions is used, so that the registry
(:mod:`musinterp.registry`) can be read at workflow parse time.
"""

from __future__ import annotations

_LAZY = {
    "build": "store", "save": "store", "load": "store", "write_samples": "store",
    "train_model": "training", "TrainConfig": "training", "train_lm": "training",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TrainConfig", "build", "load", "save", "train_lm", "train_model", "write_samples"]
