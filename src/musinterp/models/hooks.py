"""Replace a site's activations inside any model family, for splicing and interventions.

A family exposes ``hook_point(site) -> HookPoint(module, get, put)``
(:class:`musinterp.models.interface.MusicModel`); :func:`replace_site` installs a
PyTorch forward hook on that module for the duration of a ``with`` block, so the model code
itself never changes.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch


@contextlib.contextmanager
def replace_site(model, site: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Inside the block, the activations ``a [batch, time, d]`` at ``site`` become ``fn(a)``."""
    module, get, put = model.hook_point(site)

    def hook(_module, _inputs, output):
        return put(output, fn(get(output)))

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
