"""A restricted unpickler for checkpoints from the internet: numeric numpy arrays, dtypes,
scalars and builtin containers, nothing else.

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
import io
import math
import os
import pickle

import numpy as np

_NUMERIC_KINDS = "biufc"  # bool, signed int, unsigned int, float, complex


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
