"""Importing folk-rnn checkpoint pickles: exact numerics, provenance, refusal of unsafe pickles.

The checkpoints are written here the way folk-rnn's ``train_rnn.py`` wrote them (Python 2
``cPickle`` protocol 2, numpy 1.x): :func:`py2_pickle` emits the same opcodes byte for byte
(Python 2 ``str`` as BINSTRING, arrays through ``numpy.core.multiarray._reconstruct``), since no
Python 2 is at hand. The model is checked against an independent numpy implementation of the
documented step.
"""

import hashlib
import json
import os
import pickle
import pickletools
import shutil
import struct
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_folkrnn_model import numpy_folkrnn

from musinterp.models import load
from musinterp.models.folkrnn.lasagne_import import (
    ADMITTED_GLOBALS,
    UnsafePickleError,
    import_folkrnn,
    load_folkrnn_pickle,
    restricted_loads,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HIDDEN = 16


def v2_tokens() -> list[str]:
    """folk-rnn v2's 137 tokens in index order (the shared vocab file), else a synthetic list."""
    path = SHARED_DATA / "folkrnn_v2_vocab.json"
    if path.exists():
        idx2token = json.loads(path.read_text())
        return [idx2token[str(i)] for i in range(len(idx2token))]
    notes = [f"{acc}{n}" for acc in ("", "^", "_", "=") for n in "CDEFGABcdefgab"]
    rest = ["<s>", "</s>", "|", ":|", "|:", "M:4/4", "K:Cmaj", "2", "3", "/2", ">", "<", "(3", "z"]
    tokens = notes + rest + [f"x{i}" for i in range(137)]
    return tokens[:137]


# --- a Python 2 / numpy 1.x protocol-2 pickle writer ---------------------------------------------


def _py2_str(data: bytes) -> bytes:
    if len(data) < 256:
        return b"U" + bytes([len(data)]) + data  # SHORT_BINSTRING
    return b"T" + struct.pack("<i", len(data)) + data  # BINSTRING


def _py2_dtype(dtype: np.dtype) -> bytes:
    # numpy 1.x: dtype.__reduce__() == (numpy.dtype, ('f4', 0, 1), (3, '<', None, None, None, -1, -1, 0))
    order = b"|" if dtype.itemsize == 1 else b"<"
    return (
        b"cnumpy\ndtype\n" + _py2_str(f"{dtype.kind}{dtype.itemsize}".encode()) + b"K\x00K\x01\x87R"
        + b"(K\x03" + _py2_str(order) + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    )


def _emit(obj, out: bytearray) -> None:
    if obj is None:
        out += b"N"
    elif obj is True or obj is False:
        out += b"\x88" if obj else b"\x89"
    elif isinstance(obj, np.ndarray):
        # (numpy.core.multiarray._reconstruct, (numpy.ndarray, (0,), 'b'),
        #  (1, shape, dtype, is_fortran, raw data as a Python 2 str))
        a = np.asarray(obj, order="C")
        out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _py2_str(b"b") + b"\x87R"
        out += b"(K\x01"
        _emit(tuple(a.shape), out)
        out += _py2_dtype(a.dtype) + b"\x89" + _py2_str(a.astype(a.dtype.newbyteorder("<")).tobytes()) + b"tb"
    elif isinstance(obj, np.generic):
        out += b"cnumpy.core.multiarray\nscalar\n" + _py2_dtype(obj.dtype) + _py2_str(obj.tobytes()) + b"\x86R"
    elif isinstance(obj, int):
        if 0 <= obj < 256:
            out += b"K" + bytes([obj])
        elif 0 <= obj < 65536:
            out += b"M" + struct.pack("<H", obj)
        else:
            out += b"J" + struct.pack("<i", obj)
    elif isinstance(obj, float):
        out += b"G" + struct.pack(">d", obj)
    elif isinstance(obj, (str, bytes)):  # a Python 2 str is bytes
        out += _py2_str(obj.encode("utf-8") if isinstance(obj, str) else obj)
    elif isinstance(obj, tuple):
        if not obj:
            out += b")"
        elif len(obj) <= 3:
            for item in obj:
                _emit(item, out)
            out += {1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(obj)]
        else:
            out += b"("
            for item in obj:
                _emit(item, out)
            out += b"t"
    elif isinstance(obj, list):
        out += b"]"
        if obj:
            out += b"("
            for item in obj:
                _emit(item, out)
            out += b"e"
    elif isinstance(obj, dict):
        out += b"}"
        if obj:
            out += b"("
            for key, value in obj.items():
                _emit(key, out)
                _emit(value, out)
            out += b"u"
    else:
        raise TypeError(type(obj))


def py2_pickle(obj) -> bytes:
    out = bytearray(b"\x80\x02")
    _emit(obj, out)
    return bytes(out + b".")


# --- a checkpoint in folk-rnn's layout and an independent reference -----------------------------


def lasagne_arrays(rng, vocab: int, hidden: int = HIDDEN, n_layers: int = 3) -> list[np.ndarray]:
    arrays = [np.eye(vocab, dtype=np.float32)]
    for layer in range(n_layers):
        n_in = vocab if layer == 0 else hidden
        for _gate in ("ingate", "forgetgate", "cell", "outgate"):
            arrays += [
                rng.normal(0, 0.4, (n_in, hidden)).astype(np.float32),  # W_in_to_<gate>
                rng.normal(0, 0.4, (hidden, hidden)).astype(np.float32),  # W_hid_to_<gate>
                rng.normal(0, 0.4, hidden).astype(np.float32),  # b_<gate>
            ]
        arrays += [rng.normal(0, 0.5, (1, hidden)).astype(np.float32),  # cell_init
                   rng.normal(0, 0.5, (1, hidden)).astype(np.float32)]  # hid_init
    arrays += [rng.normal(0, 0.4, (hidden, vocab)).astype(np.float32), rng.normal(0, 0.4, vocab).astype(np.float32)]
    return arrays


def folkrnn_checkpoint(tokens: list[str], seed: int = 0, hidden: int = HIDDEN, n_layers: int = 3) -> dict:
    """What folk-rnn's train_rnn.py pickles (theano losses are 0-d float32 arrays)."""
    rng = np.random.default_rng(seed)
    return {
        "configuration": "config5",
        "experiment_id": "config5-wrepeats-20160112-222521",
        "epoch_since_start": 99,
        "iters_since_start": 35100,
        "losses_train": [np.array(v, dtype=np.float32) for v in (3.1, 1.2, 0.95)],
        "losses_eval_valid": [np.float32(1.3), np.float32(1.05)],
        "learning_rate": np.float32(0.0009),
        "token2idx": {token: index for index, token in enumerate(tokens)},
        "param_values": lasagne_arrays(rng, len(tokens), hidden, n_layers),
    }


def reference_logits(arrays: list[np.ndarray], token_ids: list[int]) -> np.ndarray:
    """The documented step in float64 (test_folkrnn_model's independent numpy implementation)."""
    return numpy_folkrnn([np.asarray(a, dtype=np.float64) for a in arrays], np.asarray(token_ids))[0]


@pytest.fixture(scope="module")
def tokens():
    return v2_tokens()


@pytest.fixture(scope="module")
def checkpoint(tokens):
    return folkrnn_checkpoint(tokens)


@pytest.fixture()
def py2_file(tmp_path, checkpoint):
    path = tmp_path / "folkrnn_v2.pkl"
    path.write_bytes(py2_pickle(checkpoint))
    return path


def model_logits(model, token_ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([token_ids]))[0].double().numpy()


# --- the writer itself -------------------------------------------------------------------------


def test_py2_writer_matches_what_python2_wrote(py2_file, checkpoint):
    data = py2_file.read_bytes()
    ops = list(pickletools.genops(data))
    assert ops[0][0].name == "PROTO" and ops[0][1] == 2
    names = {op.name for op, _, _ in ops}
    assert not names & {"BINUNICODE", "SHORT_BINUNICODE", "BINBYTES", "SHORT_BINBYTES", "STACK_GLOBAL"}
    assert {arg for op, arg, _ in ops if op.name == "GLOBAL"} == {
        "numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype", "numpy.core.multiarray scalar"}
    # Our own bytes, so the plain unpickler may read them: the restricted one must agree with it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy 2 renamed numpy.core
        plain = pickle.loads(data, encoding="latin1")
    restricted = restricted_loads(data, py2_file)
    assert plain.keys() == restricted.keys() == checkpoint.keys()
    for a, b, c in zip(plain["param_values"], restricted["param_values"], checkpoint["param_values"]):
        assert type(b) is np.ndarray and b.dtype == np.float32 and np.array_equal(a, b) and np.array_equal(b, c)
    assert restricted["token2idx"] == checkpoint["token2idx"]
    assert restricted["learning_rate"] == np.float32(0.0009) and isinstance(restricted["learning_rate"], np.float32)


# --- numerics, vocab order and provenance -------------------------------------------------------


def test_import_matches_numpy_reference(tmp_path, py2_file, checkpoint, tokens):
    out = tmp_path / "model"
    meta = import_folkrnn(py2_file, out, dropout=0.5, source="https://example.org/folkrnn_v2.pkl")
    model, saved = load(out)
    assert saved["vocab"] == meta["vocab"] == tokens  # index order of token2idx
    assert model.config.vocab_size == 137 and model.config.hidden_size == HIDDEN and model.config.n_layers == 3
    assert model.config.dropout == 0.5

    rng = np.random.default_rng(1)
    token_ids = [tokens.index("<s>")] + rng.integers(0, 137, 199).tolist()
    logits = model_logits(model, token_ids)
    reference = reference_logits(checkpoint["param_values"], token_ids)
    assert logits.shape == (200, 137)
    assert np.abs(logits - reference).max() <= 1e-5


def test_vocab_follows_token2idx_not_file_order(tmp_path, checkpoint, tokens):
    """token2idx's dict order is arbitrary in folk-rnn; the vocab must follow the indices."""
    shuffled = dict(reversed(list(checkpoint["token2idx"].items())))
    path = tmp_path / "shuffled.pkl"
    path.write_bytes(py2_pickle({**checkpoint, "token2idx": shuffled}))
    assert load_folkrnn_pickle(path)["vocab"] == tokens


def test_provenance(tmp_path, py2_file):
    out = tmp_path / "model"
    import_folkrnn(py2_file, out, source="https://example.org/folkrnn_v2.pkl")
    saved = json.loads((out / "model.json").read_text())
    prov = saved["provenance"]
    data = py2_file.read_bytes()
    assert prov["sha256"] == hashlib.sha256(data).hexdigest()
    assert prov["git_blob_id"] == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    if shutil.which("git"):
        git = subprocess.run(["git", "hash-object", str(py2_file)], capture_output=True, text=True, check=True)
        assert prov["git_blob_id"] == git.stdout.strip()
    assert prov["source"] == "https://example.org/folkrnn_v2.pkl" and prov["file"] == "folkrnn_v2.pkl"
    assert prov["size_bytes"] == len(data)
    assert prov["experiment_id"] == "config5-wrepeats-20160112-222521"
    assert prov["configuration"] == "config5"
    assert prov["epoch_since_start"] == 99 and prov["iters_since_start"] == 35100
    assert prov["final_train_loss"] == pytest.approx(0.95, abs=1e-6)
    assert prov["final_valid_loss"] == pytest.approx(1.05, abs=1e-6)
    assert prov["learning_rate"] == pytest.approx(0.0009, rel=1e-6)
    assert prov["embedding_is_identity"] is True
    assert saved["producer"].startswith("musinterp")
    assert saved["family"] == "folkrnn"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folkrnn_v2.pkl", "model"]  # no temporary left
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.pt"]


def test_import_into_existing_directory_replaces_model_files_only(tmp_path, py2_file):
    out = tmp_path / "model"
    out.mkdir()
    (out / "model.json").write_text("{}")  # stale, from an earlier run
    (out / "notes.txt").write_text("kept")
    import_folkrnn(py2_file, out)
    assert json.loads((out / "model.json").read_text())["provenance"]["file"] == "folkrnn_v2.pkl"
    assert (out / "notes.txt").read_text() == "kept"
    assert load(out)[0].config.vocab_size == 137
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folkrnn_v2.pkl", "model"]


def test_python2_byte_string_tokens_become_text(tmp_path):
    """Python 2 str tokens are bytes; read as latin-1, UTF-8 ones are decoded back."""
    tokens = ["<s>", "</s>", "|", "[K:Åmaj]".encode("utf-8"), b"a"]
    ckpt = folkrnn_checkpoint(["<s>", "</s>", "|", "x", "a"], hidden=3, n_layers=1)
    ckpt["token2idx"] = {t: i for i, t in enumerate(tokens)}
    path = tmp_path / "small.pkl"
    path.write_bytes(py2_pickle(ckpt))
    loaded = load_folkrnn_pickle(path)
    assert loaded["vocab"] == ["<s>", "</s>", "|", "[K:Åmaj]", "a"]
    assert all(type(t) is str for t in loaded["token2idx"])
    assert len(loaded["param_values"]) == 17


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy2_resaved_pickle_loads(tmp_path, checkpoint, protocol):
    """A user who re-saves the file with Python 3 and numpy 2 can still import it."""
    path = tmp_path / f"resaved{protocol}.pkl"
    odd = {"fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)), "big_endian": np.arange(5, dtype=">i4"),
           "scalar": np.int16(-7), "zero_size": np.zeros((0, 3), np.float32), "flag": np.array([True, False])}
    path.write_bytes(pickle.dumps({**checkpoint, **odd}, protocol=protocol))
    loaded = load_folkrnn_pickle(path)
    for key, value in odd.items():
        assert np.array_equal(loaded[key], value) and loaded[key].dtype == value.dtype and loaded[key].shape == value.shape
    assert loaded["scalar"] == -7 and isinstance(loaded["scalar"], np.int16)
    assert loaded["vocab"] == list(checkpoint["token2idx"])
    for a, b in zip(loaded["param_values"], checkpoint["param_values"]):
        assert np.array_equal(a, b)
    assert loaded["losses_train"] == pytest.approx([3.1, 1.2, 0.95])
    if protocol == 2:
        assert b"_codecs\nencode" in path.read_bytes()  # Python 3 bytes at protocol 2
        out = tmp_path / "model"
        import_folkrnn(path, out)
        model, _ = load(out)
        token_ids = [loaded["token2idx"]["<s>"], 3, 5, 7, 11]
        assert np.abs(model_logits(model, token_ids) - reference_logits(checkpoint["param_values"], token_ids)).max() <= 1e-5


# --- unsafe pickles ------------------------------------------------------------------------------


class Reduce:
    """Pickles as ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _touch_command(marker: Path) -> str:
    return f"touch {marker}"


def payload_os_system(marker):
    return Reduce(os.system, _touch_command(marker)), r"posix\.system"


def payload_eval(marker):
    return Reduce(eval, f"open({str(marker)!r}, 'w').close()"), r"(__builtin__|builtins)\.eval"


def payload_popen(marker):
    return Reduce(subprocess.Popen, ["touch", str(marker)]), r"subprocess\.Popen"


def payload_object_array(marker):
    return np.array([Reduce(os.system, _touch_command(marker)), 1], dtype=object), r"dtype '\|O'"


def payload_plain_object_array(marker):
    return np.array([1, "a"], dtype=object), r"dtype '\|O'"


def payload_codecs_other_encoding(marker):
    import codecs

    return Reduce(codecs.encode, "abc", "zlib_codec"), r"latin1"


def payload_huge_reconstruct(marker):
    from numpy._core.multiarray import _reconstruct

    return Reduce(_reconstruct, np.ndarray, (10**12,), b"b"), r"_reconstruct called with shape"


def payload_ordinary_class(marker):
    import collections

    return collections.OrderedDict(a=1), r"collections\.OrderedDict"


PAYLOADS = [payload_os_system, payload_eval, payload_popen, payload_object_array, payload_plain_object_array,
            payload_codecs_other_encoding, payload_huge_reconstruct, payload_ordinary_class]


@pytest.mark.parametrize("where", ["first", "nested_last"])
@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda f: f.__name__.removeprefix("payload_"))
def test_malicious_pickle_is_refused(tmp_path, checkpoint, payload, where):
    marker = tmp_path / "pwned"
    evil, refused = payload(marker)
    if where == "first":
        ckpt = {"evil": evil, **checkpoint}
    else:
        ckpt = {**checkpoint, "losses_eval_valid": [1.0, {"x": [evil]}]}
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(ckpt, protocol=2))
    out = tmp_path / "model"
    with pytest.raises(UnsafePickleError, match=refused) as info:
        import_folkrnn(path, out)
    assert str(path) in str(info.value)
    assert not marker.exists()
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pkl"]


def _crafted(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


def _short_text(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


@pytest.mark.parametrize(
    "data, error, refused",
    [
        # GLOBAL 'posix system' written by hand, as in a tampered Python 2 file
        (lambda m: _crafted(b"cposix\nsystem\n" + _short_text(f"touch {m}") + b"\x85R"), UnsafePickleError,
         r"posix\.system"),
        (lambda m: _crafted(b"c__builtin__\neval\n" + _short_text(f"open({str(m)!r}, 'w')") + b"\x85R"),
         UnsafePickleError, r"__builtin__\.eval \(builtins\.eval in Python 3\)"),
        (lambda m: _crafted(b"ccopy_reg\n_reconstructor\n"), UnsafePickleError, r"copy_reg\._reconstructor"),
        # STACK_GLOBAL (protocol 4 spelling)
        (lambda m: b"\x80\x04" + _short_text("os") + _short_text("system") + b"\x93" + _short_text(f"touch {m}")
         + b"\x85R.", UnsafePickleError, r"os\.system"),
        # numpy.ndarray called (OBJ) or instantiated (NEWOBJ) directly, not through _reconstruct
        (lambda m: _crafted(b"(cnumpy\nndarray\nK\x03o"), UnsafePickleError, r"only appear as the first argument"),
        (lambda m: _crafted(b"cnumpy\nndarray\n)\x81"), ValueError, r"NEWOBJ class argument"),
        # BUILD on an admitted global (would otherwise alter it for every later load)
        (lambda m: _crafted(b"cnumpy\ndtype\nN}\x86b"), UnsafePickleError, r"refused to set the state of the global"),
        # _reconstruct with a placeholder for subtype, and a state whose data is too short
        (lambda m: _crafted(b"cnumpy._core.multiarray\n_reconstruct\nN)U\x01b\x87R"), UnsafePickleError,
         r"only numpy\.ndarray is admitted"),
        (lambda m: _crafted(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
                            b"(K\x01K\x03\x85cnumpy\ndtype\nU\x02f4K\x00K\x01\x87R\x89U\x04abcdtb"),
         UnsafePickleError, r"4 bytes of data for shape \[3\] of <f4 \(12 bytes\)"),
        # a persistent id
        (lambda m: _crafted(_short_text("x") + b"Q"), UnsafePickleError, r"persistent id"),
    ],
    ids=["global_posix_system", "global_builtin_eval", "copy_reg", "stack_global", "ndarray_obj", "ndarray_newobj",
         "build_on_global", "reconstruct_wrong_args", "short_array_data", "persistent_id"],
)
def test_crafted_pickle_is_refused(tmp_path, data, error, refused):
    marker = tmp_path / "pwned"
    path = tmp_path / "crafted.pkl"
    path.write_bytes(data(marker))
    with pytest.raises(ValueError, match=refused) as info:
        load_folkrnn_pickle(path)
    assert isinstance(info.value, error)
    assert str(info.value).startswith(f"{path}: ")
    assert not marker.exists()


def test_admitted_globals_are_only_numpy_reconstruction():
    assert set(ADMITTED_GLOBALS) == {
        "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
        "numpy.core.numeric._frombuffer", "numpy._core.numeric._frombuffer",
        "numpy.ndarray", "numpy.dtype", "_codecs.encode", "__builtin__.bytes", "builtins.bytes",
    }


# --- layout errors ------------------------------------------------------------------------------


def _broken(checkpoint, kind):
    ckpt = dict(checkpoint)
    params = list(checkpoint["param_values"])
    if kind == "44 arrays":
        ckpt["param_values"] = params[:-1]
    elif kind == "token2idx skips an index":
        t2i = dict(checkpoint["token2idx"])
        t2i["<s>"] = len(t2i)
        ckpt["token2idx"] = t2i
    elif kind == "token2idx repeats an index":
        t2i = dict(checkpoint["token2idx"])
        t2i["<s>"] = t2i["</s>"]
        ckpt["token2idx"] = t2i
    elif kind == "W_hid shape":
        params[5] = np.zeros((HIDDEN, HIDDEN + 1), np.float32)
        ckpt["param_values"] = params
    elif kind == "layer 1 W_in shape":
        params[15] = np.zeros((HIDDEN + 2, HIDDEN), np.float32)
        ckpt["param_values"] = params
    elif kind == "output W shape":
        params[-2] = np.zeros((HIDDEN, 136), np.float32)
        ckpt["param_values"] = params
    elif kind == "integer weights":
        params[3] = params[3].astype(np.int32)
        ckpt["param_values"] = params
    elif kind == "missing token2idx":
        del ckpt["token2idx"]
    elif kind == "not a dict":
        return [ckpt]
    return ckpt


LAYOUT_ERRORS = {
    "44 arrays": r"44 arrays.*3 \+ 14",
    "token2idx skips an index": r"exactly once; missing \[\d+\]",
    "token2idx repeats an index": r"maps both",
    "W_hid shape": r"param_values\[5\] \(layer 0 W_hid_to_forgetgate\) has shape \[16, 17\], expected \[16, 16\]",
    "layer 1 W_in shape": r"param_values\[15\] \(layer 1 W_in_to_ingate\) has shape \[18, 16\]",
    "output W shape": r"output W\) has shape \[16, 136\], expected \[16, 137\]",
    "integer weights": r"param_values\[3\].*expected floating point",
    "missing token2idx": r"missing \['token2idx'\]",
    "not a dict": r"expected a dict",
}


@pytest.mark.parametrize("kind", list(LAYOUT_ERRORS))
def test_layout_errors_name_the_file(tmp_path, checkpoint, kind):
    path = tmp_path / "broken.pkl"
    path.write_bytes(py2_pickle(_broken(checkpoint, kind)))
    out = tmp_path / "model"
    with pytest.raises(ValueError, match=LAYOUT_ERRORS[kind]) as info:
        import_folkrnn(path, out)
    assert not isinstance(info.value, UnsafePickleError)
    assert str(info.value).startswith(f"{path}: ")
    assert not out.exists()


def test_truncated_file(tmp_path, checkpoint):
    path = tmp_path / "truncated.pkl"
    path.write_bytes(py2_pickle(checkpoint)[:5000])
    with pytest.raises(ValueError, match="not a readable pickle") as info:
        load_folkrnn_pickle(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_folkrnn_pickle(tmp_path / "absent.pkl")
