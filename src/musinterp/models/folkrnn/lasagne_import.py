"""Import a published folk-rnn checkpoint (a Lasagne pickle) into a musinterp model directory, safely.

folk-rnn v2 and the Swedish folkwiki model were saved by ``train_rnn.py`` under Python 2 with
``cPickle.dump(..., pickle.HIGHEST_PROTOCOL)`` (protocol 2) and numpy 1.x: a dict with
``configuration``, ``experiment_id``, ``epoch_since_start``, ``iters_since_start``,
``losses_train``, ``losses_eval_valid``, ``learning_rate``, ``token2idx`` and ``param_values``
(see DESIGN.md, "folk-rnn v2 checkpoint format").

The file is read with :func:`musinterp.models.safe_pickle.restricted_loads` (nothing in it
runs), then its layout is checked array by array before any model is built.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ... import PRODUCER
from ...io import atomic_dir
from ..safe_pickle import (  # noqa: F401  (re-exported: the importer's public interface)
    ADMITTED_GLOBALS,
    RestrictedUnpickler,
    UnsafePickleError,
    restricted_loads,
)
from ..store import save
from .model import FolkRNN

log = logging.getLogger(__name__)

OPTIONAL_KEYS = (
    "configuration",
    "experiment_id",
    "epoch_since_start",
    "iters_since_start",
    "losses_train",
    "losses_eval_valid",
    "learning_rate",
)
GATES = ("ingate", "forgetgate", "cell", "outgate")
LAYER_ARRAYS = tuple(f"{w}_{g}" for g in GATES for w in ("W_in_to", "W_hid_to", "b")) + ("cell_init", "hid_init")


def _text(value, path, what: str) -> str:
    """A token or name as ``str``. Python 2 ``str`` is bytes: read as latin-1 by the unpickler,
    it is re-decoded as UTF-8 when that is what the bytes were."""
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str):
        if value.isascii():
            return value
        try:
            raw = value.encode("latin1")
        except UnicodeEncodeError:
            return value  # a Python 2 unicode object with characters beyond latin-1
    else:
        raise ValueError(f"{path}: {what} must be a string, got {type(value).__name__} {value!r}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin1")


def _integer(value, path, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iu":
            return int(value)
        raise ValueError(f"{path}: {what} must be an integer, got {type(value).__name__} {value!r}")
    return int(value)


def _number(value, path, what: str) -> float:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{path}: {what} must be a number, got {type(value).__name__} {value!r}")
    return float(value)


def _jsonable(value):
    """A JSON-safe copy of a (checked) pickle value: numpy values become Python numbers or lists,
    non-finite floats ``None``, bytes latin-1 text, tuples lists and dict keys strings."""
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, complex):
        return [_jsonable(value.real), _jsonable(value.imag)]
    if isinstance(value, bytes):
        return value.decode("latin1")
    if isinstance(value, dict):
        return {str(_jsonable(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _array_name(index: int, n_layers: int) -> str:
    if index == 0:
        return "embedding W"
    if index == 1 + 14 * n_layers:
        return "output W"
    if index == 2 + 14 * n_layers:
        return "output b"
    layer, k = divmod(index - 1, 14)
    return f"layer {layer} {LAYER_ARRAYS[k]}"


def validate_checkpoint(ckpt, path) -> dict:
    """Check the folk-rnn layout of an unpickled checkpoint and return it normalised (see
    :func:`load_folkrnn_pickle`); errors are ``ValueError`` naming ``path``."""
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a dict (a folk-rnn checkpoint), got {type(ckpt).__name__}")
    ckpt = {_text(k, path, "a top-level key"): v for k, v in ckpt.items()}
    missing = [k for k in ("param_values", "token2idx") if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: not a folk-rnn checkpoint: missing {missing} (keys: {sorted(ckpt)})")

    params = ckpt["param_values"]
    if not isinstance(params, (list, tuple)):
        raise ValueError(f"{path}: param_values must be a list of arrays, got {type(params).__name__}")
    n_layers, rest = divmod(len(params) - 3, 14)
    if len(params) < 17 or rest:
        raise ValueError(
            f"{path}: param_values holds {len(params)} arrays; folk-rnn writes 3 + 14·layers "
            "(embedding, 14 per LSTM layer, output W and b), e.g. 45 for 3 layers"
        )
    arrays = []
    for index, a in enumerate(params):
        name = _array_name(index, n_layers)
        if not isinstance(a, np.ndarray):
            raise ValueError(f"{path}: param_values[{index}] ({name}) is a {type(a).__name__}, not a numpy array")
        if a.dtype.kind != "f":
            raise ValueError(f"{path}: param_values[{index}] ({name}) has dtype {a.dtype}, expected floating point")
        a = np.asarray(a, dtype=np.float32, order="C")  # native byte order, ndim kept
        if not np.isfinite(a).all():
            raise ValueError(f"{path}: param_values[{index}] ({name}) holds non-finite values")
        arrays.append(a)

    def expect(index: int, *shapes: tuple) -> None:
        if arrays[index].shape not in shapes:
            want = " or ".join(str(list(s)) for s in shapes)
            raise ValueError(
                f"{path}: param_values[{index}] ({_array_name(index, n_layers)}) has shape "
                f"{list(arrays[index].shape)}, expected {want}"
            )

    if arrays[0].ndim != 2 or arrays[1].ndim != 2:
        raise ValueError(
            f"{path}: param_values[0] (embedding W) and [1] (layer 0 W_in_to_ingate) must be matrices, "
            f"got shapes {list(arrays[0].shape)} and {list(arrays[1].shape)}"
        )
    vocab_size, n_embed = arrays[0].shape
    hidden = arrays[1].shape[1]
    for layer in range(n_layers):
        base = 1 + 14 * layer
        n_in = n_embed if layer == 0 else hidden
        for gate in range(4):
            expect(base + 3 * gate, (n_in, hidden))
            expect(base + 3 * gate + 1, (hidden, hidden))
            expect(base + 3 * gate + 2, (hidden,))
        expect(base + 12, (1, hidden), (hidden,))
        expect(base + 13, (1, hidden), (hidden,))
    expect(len(arrays) - 2, (hidden, vocab_size))
    expect(len(arrays) - 1, (vocab_size,))

    token2idx_raw = ckpt["token2idx"]
    if not isinstance(token2idx_raw, dict):
        raise ValueError(f"{path}: token2idx must be a dict token -> index, got {type(token2idx_raw).__name__}")
    token2idx: dict[str, int] = {}
    for token, index in token2idx_raw.items():
        token = _text(token, path, "a token2idx key")
        if token in token2idx:
            raise ValueError(f"{path}: token2idx holds token {token!r} twice")
        token2idx[token] = _integer(index, path, f"token2idx[{token!r}]")
    if len(token2idx) != vocab_size:
        raise ValueError(f"{path}: token2idx has {len(token2idx)} tokens but the embedding has {vocab_size} rows")
    by_index: dict[int, str] = {}
    for token, index in token2idx.items():
        if index in by_index:
            raise ValueError(f"{path}: token2idx maps both {by_index[index]!r} and {token!r} to index {index}")
        by_index[index] = token
    skipped = sorted(set(range(vocab_size)) - set(by_index))
    if skipped:
        extra = sorted(set(by_index) - set(range(vocab_size)))
        raise ValueError(
            f"{path}: token2idx must cover indices 0..{vocab_size - 1} exactly once; "
            f"missing {skipped[:10]}{' …' if len(skipped) > 10 else ''}, out of range {extra[:10]}"
        )
    for required in ("<s>", "</s>"):
        if required not in token2idx:
            raise ValueError(f"{path}: token2idx has no {required!r} token (folk-rnn tunes start at <s>, end at </s>)")

    out = dict(ckpt)
    out["param_values"] = arrays
    out["token2idx"] = token2idx
    out["vocab"] = [by_index[i] for i in range(vocab_size)]
    for key in ("configuration", "experiment_id"):
        if isinstance(out.get(key), (str, bytes)):
            out[key] = _text(out[key], path, key)
    if "configuration" in out:  # folk-rnn stores the configuration's name; keep anything JSON-safe
        try:
            out["configuration"] = _jsonable(out["configuration"])
        except RecursionError:
            raise ValueError(f"{path}: configuration is nested too deeply (or refers to itself)") from None
    for key in ("epoch_since_start", "iters_since_start"):
        if key in out:
            out[key] = _integer(out[key], path, key)
    if "learning_rate" in out:
        out["learning_rate"] = _number(out["learning_rate"], path, "learning_rate")
    for key in ("losses_train", "losses_eval_valid"):
        if key in out:
            if not isinstance(out[key], (list, tuple, np.ndarray)):
                raise ValueError(f"{path}: {key} must be a list of numbers, got {type(out[key]).__name__}")
            out[key] = [_number(v, path, f"{key}[{i}]") for i, v in enumerate(out[key])]
    return out


def _read_checkpoint(path: Path) -> tuple[dict, bytes]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (a folk-rnn checkpoint pickle)")
    data = path.read_bytes()
    return validate_checkpoint(restricted_loads(data, source=path), path), data


def load_folkrnn_pickle(path: str | os.PathLike) -> dict:
    """Safely load and validate a folk-rnn (Lasagne) checkpoint pickle.

    Returns the checkpoint dict with string keys: ``param_values`` (3 + 14·layers contiguous
    float32 arrays in Lasagne order), ``token2idx`` (``str`` token -> index, covering
    0..vocab-1 once), ``vocab`` (tokens in index order) and whichever of ``configuration``,
    ``experiment_id``, ``epoch_since_start`` / ``iters_since_start`` (int), ``learning_rate``
    (float) and ``losses_train`` / ``losses_eval_valid`` (lists of float) the file holds.
    Raises :class:`UnsafePickleError` for anything but numpy arrays and builtin containers, and
    ``ValueError`` naming the file for a layout that is not folk-rnn's.
    """
    return _read_checkpoint(Path(path))[0]


# --- import -------------------------------------------------------------------------------------


def _last(values: list | None) -> float | None:
    if not values:
        return None
    return values[-1] if math.isfinite(values[-1]) else None


def import_folkrnn(
    pkl_path: str | os.PathLike, out_dir: str | os.PathLike, dropout: float = 0.5, source: str | None = None
) -> dict:
    """Import a folk-rnn checkpoint pickle into a musinterp model directory; return its meta.

    Writes ``out_dir/model.pt`` and ``out_dir/model.json`` (vocab in token2idx order, provenance:
    the file's name, git blob id, sha256 and size, ``source`` — a URL, say — and the checkpoint's
    experiment id, configuration, epoch and iteration counters, learning rate and final losses).
    Everything is checked and built in memory first, so a refused or malformed file writes nothing;
    the files are then written in a temporary directory beside ``out_dir`` and moved in, a missing
    ``out_dir`` as a whole, an existing one (say, made by Snakemake) with ``model.json`` last.
    """
    pkl_path, out_dir = Path(pkl_path), Path(out_dir)
    ckpt, data = _read_checkpoint(pkl_path)
    params = ckpt["param_values"]
    model = FolkRNN.from_lasagne(params, dropout=dropout).eval()
    cfg = model.config
    embedding = params[0]
    embedding_is_identity = embedding.shape[0] == embedding.shape[1] and bool(
        np.array_equal(embedding, np.eye(embedding.shape[0], dtype=np.float32))
    )
    log.info(
        "%s: folk-rnn checkpoint %s: %d tokens, %d LSTM layers of %d units, %d arrays (embedding %s)",
        pkl_path, ckpt.get("experiment_id", "?"), cfg.vocab_size, cfg.n_layers, cfg.hidden_size, len(params),
        "identity" if embedding_is_identity else str(list(embedding.shape)),
    )

    losses_train, losses_valid = ckpt.get("losses_train"), ckpt.get("losses_eval_valid")
    provenance = {
        "format": "folk-rnn Lasagne checkpoint pickle (restricted unpickling)",
        "source": source if source is not None else str(pkl_path),
        "file": pkl_path.name,
        "git_blob_id": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
        "experiment_id": ckpt.get("experiment_id"),
        "configuration": ckpt.get("configuration"),
        "epoch_since_start": ckpt.get("epoch_since_start"),
        "iters_since_start": ckpt.get("iters_since_start"),
        "learning_rate": _jsonable(ckpt.get("learning_rate")),
        "final_train_loss": _last(losses_train),
        "final_valid_loss": _last(losses_valid),
        "n_train_losses": None if losses_train is None else len(losses_train),
        "n_valid_losses": None if losses_valid is None else len(losses_valid),
        "embedding_is_identity": embedding_is_identity,
        "extra_keys": sorted(set(ckpt) - {"param_values", "token2idx", "vocab", *OPTIONAL_KEYS}),
    }
    meta = {"vocab": ckpt["vocab"], "provenance": provenance, "producer": PRODUCER}

    if not out_dir.exists():
        with atomic_dir(out_dir) as tmp:
            save(model, tmp, meta)
    else:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".part", dir=out_dir.parent))
        try:
            save(model, tmp, meta)
            # model.json goes in last and is removed first: a half-finished move never pairs a new
            # model.pt with an old model.json, and load() refuses a directory without model.json.
            (out_dir / "model.json").unlink(missing_ok=True)
            os.replace(tmp / "model.pt", out_dir / "model.pt")
            os.replace(tmp / "model.json", out_dir / "model.json")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote %s (source %s, git blob %s)", out_dir, provenance["source"], provenance["git_blob_id"])
    return {"family": model.family, "config": cfg.to_dict(), **meta}
