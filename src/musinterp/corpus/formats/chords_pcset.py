"""The ``chords-pcset`` token format: root-position pitch classes (defined in :mod:`.chords`)."""

from .chords import PCSET_FORMAT as FORMAT

__all__ = ["FORMAT"]
