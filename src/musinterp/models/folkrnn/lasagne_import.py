"""Import a published folk-rnn checkpoint (a Lasagne pickle) into a musinterp model directory, safely.

folk-rnn v2 and the Swedish folkwiki model were saved by ``train_rnn.py`` under Python 2 with
``cPickle.dump(..., pickle.HIGHEST_PROTOCOL)`` (protocol 2) and numpy 1.x: a dict with
``configuration``, ``experiment_id``, ``epoch_since_start``, ``iters_since_start``,
``losses_train``, ``losses_eval_valid``, ``learning_rate``, ``token2idx`` and ``param_values``
(see DESIGN.md, "folk-rnn v2 checkpoint format").

Unpickling runs whatever callables the file names, so a pickle from the internet is never given
to ``pickle.load``. :class:`RestrictedUnpickler` resolves only the handful of globals that numpy
array and scalar reconstruction needs, each replaced by a sealed checking wrapper (numeric dtypes
only, no object arrays, exact arguments); every other global, and any persistent id, is refused
with :class:`UnsafePickleError` before it can be called. Array data is decoded by this module
(``np.frombuffer`` after checking dtype, shape and byte count), not by numpy's ``__setstate__``.
The loaded tree is then checked once more: only dicts, lists, tuples, strings, numbers and
numeric numpy arrays/scalars may remain.

Admitted globals (module spellings of numpy 1.x ``numpy.core`` and numpy 2 ``numpy._core``):

- ``numpy.core.multiarray._reconstruct``: ``ndarray.__reduce__`` rebuilds every array through it
  (``_reconstruct(ndarray, (0,), 'b')``, then BUILD with ``(1, shape, dtype, is_fortran, data)``).
  Admitted only with exactly those arguments; it returns a placeholder whose state is checked
  (numeric dtype, shape, byte count, set once) and decoded with ``np.frombuffer``.
- ``numpy.ndarray``: the first argument of ``_reconstruct``. The pickle gets a sealed stand-in
  that only the ``_reconstruct`` wrapper accepts; calling it (OBJ, INST) is refused, and NEWOBJ
  refuses it as not a class.
- ``numpy.dtype``: every array's and scalar's dtype. Only boolean, integer, float and complex
  kinds are built, always as a fresh descriptor; ``dtype('O')`` (whose arrays unpickle arbitrary
  items), structured, void, string and datetime dtypes are refused.
- ``numpy.core.multiarray.scalar``: numpy scalars (``np.float32`` learning rate, losses);
  numeric dtypes only, data exactly one item long, decoded with ``np.frombuffer``.
- ``_codecs.encode``: Python 3 writes ``bytes`` at protocols 0-2 as
  ``_codecs.encode(text, "latin1")`` (array data in a pickle re-saved with protocol 2 by Python 3);
  admitted for latin-1 only.
- ``__builtin__.bytes`` / ``builtins.bytes``: the same writer spells an empty ``bytes`` (the data
  of a zero-size array) as ``bytes()``; admitted with no arguments only.
- ``numpy.core.numeric._frombuffer``: numpy's protocol-5 array reduction (a pickle re-saved with
  ``protocol=5``, the default from Python 3.14); reimplemented here as ``np.frombuffer`` + reshape
  for numeric dtypes.

No other builtins are admitted: the layout needs no ``set``, ``frozenset`` or ``complex`` (dicts,
lists, tuples, strings, ints, floats and booleans have their own opcodes), and
``copyreg._reconstructor`` is not needed because ``ndarray`` defines ``__reduce__``.
"""

from __future__ import annotations

import _compat_pickle
import hashlib
import io
import logging
import math
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ... import PRODUCER
from ...io import atomic_dir
from ..store import save
from .model import FolkRNN

log = logging.getLogger(__name__)

_NUMERIC_KINDS = "biufc"  # bool, signed int, unsigned int, float, complex

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


class UnsafePickleError(ValueError):
    """A pickle asked for something outside what numpy array reconstruction needs."""


# --- the admitted callables ----------------------------------------------------------------------


class _Admitted:
    """What ``find_class`` hands the pickle for an admitted global: a sealed callable. BUILD on it
    and attribute assignment are refused, so a pickle cannot alter the wrappers for later loads."""

    __slots__ = ("_func", "_name")

    def __init__(self, func, name: str):
        object.__setattr__(self, "_func", func)
        object.__setattr__(self, "_name", name)

    def __call__(self, *args, **kwargs):
        return self._func(*args, **kwargs)

    def __setstate__(self, state):
        raise UnsafePickleError(f"refused to set the state of the global {self._name}")

    def __setattr__(self, name, value):
        raise UnsafePickleError(f"refused to set {name!r} on the global {self._name}")

    def __repr__(self) -> str:
        return f"<admitted {self._name}>"


class _PickledArray:
    """What the pickle's ``_reconstruct(ndarray, (0,), 'b')`` returns. numpy then passes the
    array's state through BUILD; here :func:`_array_from_state` checks it and builds a plain
    array with ``np.frombuffer`` (numpy's own ``__setstate__`` never runs). The loader swaps each
    placeholder for its array."""

    __slots__ = ("array",)

    def __init__(self):
        self.array = None

    def __setstate__(self, state):
        if self.array is not None:
            raise UnsafePickleError("refused to set an array's state twice")
        self.array = _array_from_state(state)


def _check_numeric_dtype(dtype, what: str) -> np.dtype:
    if not isinstance(dtype, np.dtype):
        raise UnsafePickleError(f"{what}: expected a numpy dtype, got {type(dtype).__name__}")
    if dtype.kind not in _NUMERIC_KINDS or dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise UnsafePickleError(
            f"{what}: refused numpy dtype {dtype.str!r} (kind {dtype.kind!r}); only bool, integer, "
            "float and complex arrays are admitted (an object array would unpickle arbitrary items)"
        )
    return dtype


def _shape(shape, what: str) -> tuple[int, ...]:
    if type(shape) is not tuple or not all(type(n) is int and n >= 0 for n in shape):
        raise UnsafePickleError(f"{what}: bad shape {shape!r}")
    return shape


def _as_bytes(data, what: str) -> bytes:
    if isinstance(data, str):  # a Python 2 str read with encoding="latin1"
        try:
            return data.encode("latin1")
        except UnicodeEncodeError:
            raise UnsafePickleError(f"{what}: data is text, not bytes") from None
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    raise UnsafePickleError(f"{what}: expected bytes, got {type(data).__name__}")


def _from_bytes(data: bytes, dtype: np.dtype, shape: tuple[int, ...], order: str, what: str) -> np.ndarray:
    if math.prod(shape) * dtype.itemsize != len(data):
        raise UnsafePickleError(
            f"{what}: {len(data)} bytes of data for shape {list(shape)} of {dtype.str} "
            f"({math.prod(shape) * dtype.itemsize} bytes)"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape, order=order).copy(order="C")


def _array_from_state(state) -> np.ndarray:
    """``ndarray.__setstate__``'s state ``(version, shape, dtype, is_fortran, data)`` -> an array."""
    what = "numpy array state"
    if type(state) is not tuple or len(state) != 5 or state[0] != 1:
        raise UnsafePickleError(f"{what}: expected (1, shape, dtype, is_fortran, data), got {type(state).__name__}")
    _version, shape, dtype, is_fortran, data = state
    _check_numeric_dtype(dtype, what)
    if type(is_fortran) not in (bool, int):
        raise UnsafePickleError(f"{what}: is_fortran must be a boolean")
    return _from_bytes(_as_bytes(data, what), dtype, _shape(shape, what), "F" if is_fortran else "C", what)


def _refuse_ndarray(*args, **kwargs):
    raise UnsafePickleError("numpy.ndarray may only appear as the first argument of numpy's _reconstruct")


def _safe_reconstruct(subtype, shape, typecode):
    if subtype is not _ADMITTED[("numpy", "ndarray")]:
        raise UnsafePickleError(f"numpy _reconstruct called with subtype {subtype!r}; only numpy.ndarray is admitted")
    if shape != (0,) or typecode not in ("b", b"b"):
        raise UnsafePickleError(
            f"numpy _reconstruct called with shape {shape!r} and typecode {typecode!r}; "
            "numpy itself only writes ((0,), 'b')"
        )
    return _PickledArray()


def _safe_dtype(spec, align=False, copy=False):
    if not isinstance(spec, str) or len(spec) > 8:
        raise UnsafePickleError(f"numpy.dtype called with {spec!r}; only short type codes such as 'f4' are admitted")
    try:
        # Always a fresh descriptor (copy=True), so the BUILD that follows cannot touch numpy's
        # shared built-in float32 dtype.
        dtype = np.dtype(spec, align=bool(align), copy=True)
    except TypeError as err:
        raise UnsafePickleError(f"numpy.dtype({spec!r}) is not a valid type code: {err}") from None
    return _check_numeric_dtype(dtype, f"numpy.dtype({spec!r})")


def _safe_scalar(dtype, data=None):
    what = "numpy scalar"
    _check_numeric_dtype(dtype, what)
    return _from_bytes(_as_bytes(data, what), dtype, (), "C", what)[()]


def _safe_frombuffer(buf, dtype, shape, order, axis_order=None):
    what = "numpy _frombuffer"
    _check_numeric_dtype(dtype, what)
    if not isinstance(buf, (bytes, bytearray)):
        raise UnsafePickleError(f"{what} needs bytes, got {type(buf).__name__}")
    if order not in ("C", "F") or axis_order is not None:
        raise UnsafePickleError(f"{what}: order {order!r} / axis order {axis_order!r} not admitted")
    return _from_bytes(bytes(buf), dtype, _shape(shape, what), order, what)


def _empty_bytes(*args):
    if args:
        raise UnsafePickleError("bytes admitted only as bytes() (how Python 3 writes b'' at protocol 2)")
    return b""


def _safe_encode(text, encoding="utf-8", errors="strict"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise UnsafePickleError(f"_codecs.encode admitted only as encode(str, 'latin1'), got encoding {encoding!r}")
    return _as_bytes(text, "_codecs.encode")


_ADMITTED: dict[tuple[str, str], _Admitted] = {}
for _module, _name, _func in [
    *((f"{core}.multiarray", "_reconstruct", _safe_reconstruct) for core in ("numpy.core", "numpy._core")),
    *((f"{core}.multiarray", "scalar", _safe_scalar) for core in ("numpy.core", "numpy._core")),
    *((f"{core}.numeric", "_frombuffer", _safe_frombuffer) for core in ("numpy.core", "numpy._core")),
    ("numpy", "ndarray", _refuse_ndarray),
    ("numpy", "dtype", _safe_dtype),
    ("_codecs", "encode", _safe_encode),
    *((builtins, "bytes", _empty_bytes) for builtins in ("__builtin__", "builtins")),
]:
    _ADMITTED[(_module, _name)] = _Admitted(_func, f"{_module}.{_name}")
ADMITTED_GLOBALS = tuple(sorted(f"{module}.{name}" for module, name in _ADMITTED))


def _python3_name(module: str, name: str) -> tuple[str, str]:
    """The Python 3 spelling of a Python 2 global (what the default ``find_class`` would import),
    for error messages only."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can only rebuild numeric numpy arrays/scalars and builtin containers.

    ``find_class`` admits the globals in :data:`ADMITTED_GLOBALS` (each a checking wrapper) and
    refuses everything else with :class:`UnsafePickleError` naming the file and ``module.name``,
    before the global can be called. Persistent ids are refused. Text is read with
    ``encoding="latin1"`` (Python 2 ``str``, including numpy's raw array data, maps byte for byte).
    :meth:`load` returns plain objects: dicts, lists, tuples, str, bytes, numbers, ``None``,
    numeric ``np.ndarray`` and numpy scalars; anything else is refused.
    """

    def __init__(self, file, source: str | os.PathLike = "<pickle>"):
        super().__init__(file, encoding="latin1", errors="strict")
        self.source = str(source)

    def find_class(self, module, name):
        # The default find_class maps Python 2 names (__builtin__, copy_reg) and imports; this one
        # imports nothing, and compares the names as written in the file.
        found = _ADMITTED.get((module, name))
        if found is None:
            py3_module, py3_name = _python3_name(module, name)
            py3 = f" ({py3_module}.{py3_name} in Python 3)" if (py3_module, py3_name) != (module, name) else ""
            raise UnsafePickleError(
                f"{self.source}: refused to load global {module}.{name}{py3}: a folk-rnn checkpoint holds only "
                f"numpy arrays, numpy scalars and builtin containers (admitted: {', '.join(ADMITTED_GLOBALS)}); "
                "nothing else in the file was run"
            )
        return found

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.source}: refused persistent id {pid!r}: a folk-rnn checkpoint uses none")

    def load(self):
        try:
            return _resolve(super().load(), {}, "the pickle")
        except UnsafePickleError as err:
            if str(err).startswith(f"{self.source}: "):
                raise
            raise UnsafePickleError(f"{self.source}: {err}") from None
        except Exception as err:  # a corrupt or truncated file, a cycle too deep, ...
            raise ValueError(f"{self.source}: not a readable pickle: {type(err).__name__}: {err}") from err


def _resolve(obj, memo: dict, where: str):
    """A copy of an unpickled tree with each array placeholder replaced by its array; refuses
    anything but dicts, lists, tuples, str, bytes, numbers, ``None`` and numeric numpy values."""
    if obj is None or type(obj) in (str, bytes, int, float, bool, complex):
        return obj
    if id(obj) in memo:
        return memo[id(obj)]
    kind = type(obj)
    if kind is _PickledArray:
        if obj.array is None:
            raise UnsafePickleError(f"{where}: an array whose state was never set")
        result = obj.array
    elif kind is np.ndarray or isinstance(obj, np.generic):
        result = obj
        _check_numeric_dtype(obj.dtype, where)
    elif kind is list:
        result = memo[id(obj)] = []
        result.extend(_resolve(v, memo, f"{where}[{i}]") for i, v in enumerate(obj))
    elif kind is dict:
        result = memo[id(obj)] = {}
        for key, value in obj.items():
            key = _resolve(key, memo, f"a key of {where}")
            result[key] = _resolve(value, memo, f"{where}[{key!r}]")
    elif kind is tuple:
        result = tuple(_resolve(v, memo, f"{where}[{i}]") for i, v in enumerate(obj))
    else:
        raise UnsafePickleError(f"{where} is a {kind.__module__}.{kind.__qualname__}, which is not admitted")
    memo[id(obj)] = result
    return result


def restricted_loads(data: bytes, source: str | os.PathLike = "<pickle>"):
    """Unpickle ``data`` with :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(io.BytesIO(data), source=source).load()


# --- layout -------------------------------------------------------------------------------------


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
