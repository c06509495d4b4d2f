"""Workflow configuration helpers that need no heavy imports (the Snakefile uses them at parse time)."""

from __future__ import annotations

import dataclasses
import itertools

# Fields of an SAE spec that may be lists: one SAE is trained per combination.
SWEEP_FIELDS = ("width", "k", "l1_coeff", "l0_coeff", "seed")


def check_keys(cls, mapping: dict, where: str, section: str) -> None:
    """Every key of a config ``section`` must be a field of the dataclass ``cls`` that reads it;
    otherwise a ValueError names ``where``, the section and the unknown keys."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - known)
    if unknown:
        names = ", ".join(f"{section}.{key}" for key in unknown)
        verb = "is not a setting" if len(unknown) == 1 else "are not settings"
        raise ValueError(f"{where}: {names} {verb} (known: {', '.join(sorted(known))})")


def family_sites(family: str, model_params: dict) -> list[str]:
    """Every activation site a model family records, in order (from the registry)."""
    from .registry import site_names

    return site_names(family, model_params)


def _format(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def expand_sae_specs(specs: list[dict]) -> list[dict]:
    """One concrete spec per combination of list-valued sweep fields.

    A spec without lists keeps its name; a swept spec gets the swept values in its name, e.g.
    ``{"name": "topk", "width": [256, 512], "k": 8}`` gives ``topk-width256`` and
    ``topk-width512``. Names must stay unique across the expanded list.
    """
    expanded = []
    for spec in specs:
        swept = [f for f in SWEEP_FIELDS if isinstance(spec.get(f), list)]
        for values in itertools.product(*(spec[f] for f in swept)):
            concrete = {**spec, **dict(zip(swept, values))}
            if swept:
                suffix = "-".join(f"{f}{_format(v)}" for f, v in zip(swept, values))
                concrete["name"] = f"{spec['name']}-{suffix}"
            expanded.append(concrete)
    names = [s["name"] for s in expanded]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"SAE names repeat after expanding sweeps: {duplicates}")
    return expanded
