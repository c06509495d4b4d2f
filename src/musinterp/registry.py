"""The model-family registry: what a family is, declared in one place, without importing torch.

The Snakefile reads it at parse time (site lists, granularities, which sites can be spliced), the
stages read it to find a family's model class, importers and corpus formats. A family is one
torch-free ``spec.py`` in its folder (``musinterp/models/<family>/spec.py``) defining ``FAMILY``,
plus one line in :data:`FAMILIES` below; its config schema lives in
``workflow/schemas/families/<family>.schema.yaml``. Everything a stage does with a model goes
through :class:`musinterp.models.interface.MusicModel`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Literal

Granularity = Literal["token", "piece"]
GRANULARITIES = ("token", "piece")


@dataclass(frozen=True)
class Site:
    """One place in a model whose activations can be recorded.

    ``granularity`` says whether the site has one vector per token (``token``: ``[batch, time,
    d]``) or one per piece (``piece``: ``[batch, d]``); ``width`` is ``d`` (``None`` where it is
    the vocabulary size and the vocabulary is not known yet); ``replaceable`` says whether
    :meth:`MusicModel.hook_point` can swap the site's value (SAE splicing, interventions).
    """

    name: str
    granularity: Granularity
    width: int | None
    replaceable: bool

    def __post_init__(self):
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"site {self.name!r}: granularity must be one of {GRANULARITIES}")


def _resolve(ref: str):
    """``"package.module:attribute"`` -> the attribute (imported only when asked for)."""
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class Family:
    """A model family as the stages see it.

    - ``config``: the family's config dataclass (torch-free; ``vocab_size`` is filled from the corpus);
    - ``sites``: ``config -> [Site]``, every site the model records, in order;
    - ``model``: ``"module:Class"`` of the torch model (imported lazily);
    - ``formats``: corpus token formats the family reads (``musinterp.corpus.formats``);
    - ``importers``: name -> ``"module:function(source, out_dir, source_url) -> meta"`` for published
      checkpoints; the first is the default;
    - ``trainer``: ``"module:function"`` that trains a reference model (see
      :func:`musinterp.models.training.train_lm` for the signature).
    """

    name: str
    config: type
    sites: Callable[[Any], list[Site]]
    model: str
    formats: tuple[str, ...]
    importers: dict[str, str] = field(default_factory=dict)
    trainer: str = "musinterp.models.training:train_lm"

    def make_config(self, params: dict | None = None, vocab_size: int | None = None):
        """The config dataclass from config-file ``params``; unknown keys are a clear error."""
        from .config import check_keys

        params = dict(params or {})
        check_keys(self.config, params, f"family {self.name!r}", "model")
        if "vocab_size" in {f.name for f in fields(self.config)}:
            params["vocab_size"] = vocab_size
        return self.config(**params)

    def site_list(self, params: dict | None = None, vocab_size: int | None = None) -> list[Site]:
        return list(self.sites(self.make_config(params, vocab_size)))

    def model_class(self):
        return _resolve(self.model)

    def importer(self, name: str | None = None):
        if not self.importers:
            raise ValueError(f"family {self.name!r} has no checkpoint importer")
        name = name or next(iter(self.importers))
        if name not in self.importers:
            raise ValueError(f"family {self.name!r} has no importer {name!r}; known: {sorted(self.importers)}")
        return _resolve(self.importers[name])

    def train_function(self):
        return _resolve(self.trainer)


def _builtin_families() -> dict[str, Family]:
    from musinterp.models.chordlm.spec import FAMILY as chordlm
    from musinterp.models.folkrnn.spec import FAMILY as folkrnn

    return {f.name: f for f in (folkrnn, chordlm)}


FAMILIES: dict[str, Family] = _builtin_families()


def register(family: Family) -> Family:
    """Add a family (e.g. one defined outside the package, or in a test); returns it."""
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[name]


def site_names(family: str, params: dict | None = None) -> list[str]:
    """Names of every site a family records with these model settings (parse-time helper)."""
    return [s.name for s in get_family(family).site_list(params)]
