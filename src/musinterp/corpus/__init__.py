"""Corpora of folk-rnn tokens: the token grammar, sources (music21's ABC corpus, folk-rnn text),
and the corpus files ``tokens.h5`` + ``vocab.json`` + ``manifest.tsv``.

``music21_abc`` imports music21 (slow to import), so it is loaded only when used.
"""

from musinterp.corpus.build import build_corpus
from musinterp.corpus.folkrnn_text import read_folkrnn_text
from musinterp.corpus.store import Corpus, CorpusFileError, TuneRecord, load_corpus, read_manifest, write_corpus
from musinterp.corpus.tokens import TOKEN_TYPES, annotate_tune, pitch_to_midi, token_type

__all__ = [
    "TOKEN_TYPES",
    "Corpus",
    "CorpusFileError",
    "TuneRecord",
    "annotate_tune",
    "build_corpus",
    "convert_abc_tune",
    "convert_collection",
    "load_corpus",
    "pitch_to_midi",
    "read_folkrnn_text",
    "read_manifest",
    "token_type",
    "write_corpus",
]


def __getattr__(name):
    if name in ("convert_abc_tune", "convert_collection"):
        from musinterp.corpus import music21_abc

        return getattr(music21_abc, name)
    raise AttributeError(f"module 'musinterp.corpus' has no attribute {name!r}")
