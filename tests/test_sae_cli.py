"""``musinterp sae train`` on activation files brought from elsewhere (only the minimal contract),
the flags of every setting, and where the recorded site comes from."""

import json
import logging

import h5py
import numpy as np
import pytest

from musinterp.cli import main
from musinterp.sae import setting_names, train_sae
from musinterp.sae.store import SPLIT_STREAM

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUICK = ["--width", "16", "--batch-size", "64", "--epochs", "1", "--eval-every", "3"]


def minimal_acts(path, n_pieces=40, d=8, seed=0, **extra_datasets):
    """/acts plus /tokens/piece, position, token: no attributes, no split column."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 30, n_pieces)
    piece = np.repeat(np.arange(n_pieces) * 3 + 7, lengths)  # piece ids need not be 0..n-1
    n = len(piece)
    with h5py.File(path, "w") as f:
        f["acts"] = (rng.normal(size=(n, d)) * rng.uniform(0.5, 2, d)).astype(np.float32)
        f["tokens/piece"] = piece
        f["tokens/position"] = np.concatenate([np.arange(length) for length in lengths])
        f["tokens/token"] = rng.integers(0, 20, n)
        for name, data in extra_datasets.items():
            f[name] = data
    return path, piece


def expected_heldout(piece, seed, fraction=0.1):
    """The documented split by piece (musinterp.sae.store), computed here on its own."""
    pieces = np.unique(piece)
    n = min(len(pieces) - 1, max(1, round(fraction * len(pieces))))
    heldout = np.random.default_rng([SPLIT_STREAM, seed]).permutation(pieces)[:n]
    return sorted(heldout.tolist())


def test_bring_your_own_activations(tmp_path, caplog):
    path, piece = minimal_acts(tmp_path / "mine.h5")
    out = tmp_path / "sae"
    caplog.set_level(logging.INFO)
    assert main(["sae", "train", str(path), "--out", str(out), "--seed", "5", *QUICK]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "cfg.json", "metrics.json", "sae_weights.safetensors", "training_log.tsv",
    ]  # fmt: skip
    heldout = expected_heldout(piece, seed=5)
    assert len(heldout) == 4  # a tenth of 40 pieces
    assert f"no /tokens/split in {path}: held out 4 of 40 pieces (seed 5)" in caplog.text
    metrics = json.loads((out / "metrics.json").read_text())
    n_heldout = int(np.isin(piece, heldout).sum())
    assert metrics["n_heldout_tokens"] == n_heldout
    assert metrics["n_train_tokens"] == len(piece) - n_heldout
    assert metrics["tokens_seen"] == len(piece) - n_heldout  # one epoch of the training rows only
    assert np.isfinite(metrics["fvu"]) and 0 < metrics["fvu"] < 2
    assert 0 < metrics["l0"] <= 16
    assert metrics["split"] == {
        "source": "drawn", "seed": 5, "heldout_fraction": 0.1, "n_pieces": 40, "heldout_pieces": heldout,
    }  # fmt: skip
    assert metrics["site"] is None
    cfg = json.loads((out / "cfg.json").read_text())
    assert (cfg["d_in"], cfg["d_sae"]) == (8, 16)


def test_the_drawn_split_follows_seed_and_fraction(tmp_path):
    path, piece = minimal_acts(tmp_path / "mine.h5")
    metrics = train_sae(path, tmp_path / "sae", width=16, batch_size=64, epochs=1, seed=2, heldout_fraction=0.25)
    heldout = expected_heldout(piece, seed=2, fraction=0.25)
    assert len(heldout) == 10 and metrics["split"]["heldout_pieces"] == heldout
    assert metrics["n_heldout_tokens"] == int(np.isin(piece, heldout).sum())


def _with(path, edit):
    with h5py.File(path, "a") as f:
        edit(f)
    return path


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda f: f.__delitem__("acts"), "/acts"),
        (lambda f: (f.__delitem__("acts"), f.create_dataset("acts", data=np.zeros(10, np.float32))), "/acts"),
        (lambda f: (f.__delitem__("acts"), f.create_dataset("acts", data=np.zeros((10, 2), np.int32))), "/acts"),
        (lambda f: f.__delitem__("tokens/piece"), "piece"),
        (lambda f: f.__delitem__("tokens/position"), "position"),
        (lambda f: f.__delitem__("tokens/token"), "token"),
        (lambda f: (f.__delitem__("tokens/token"), f.create_dataset("tokens/token", data=np.zeros(3))), "token"),
        (lambda f: f.create_dataset("tokens/split", data=np.zeros(f["acts"].shape[0], np.uint8)), "split"),
        (lambda f: f.create_dataset("tokens/split", data=np.zeros(4, np.uint8)), "split"),
    ],
    ids=[
        "no-acts", "acts-1d", "acts-int", "no-piece", "no-position", "no-token", "short-token",
        "no-heldout-rows", "short-split",
    ],
)
def test_a_file_below_the_contract_is_refused_naming_file_and_field(tmp_path, caplog, edit, field):
    path = _with(minimal_acts(tmp_path / "mine.h5")[0], edit)
    with pytest.raises(ValueError, match=str(path)) as err:
        train_sae(path, tmp_path / "sae", width=16, batch_size=64, epochs=1)
    assert field in str(err.value)
    assert main(["sae", "train", str(path), "--out", str(tmp_path / "sae"), *QUICK]) == 1
    assert str(path) in caplog.text and field in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.h5"]


def test_one_piece_cannot_be_split(tmp_path):
    path = tmp_path / "one.h5"
    with h5py.File(path, "w") as f:
        f["acts"] = np.ones((50, 4), np.float32)
        f["tokens/piece"] = np.zeros(50, np.int32)
        f["tokens/position"] = np.arange(50)
        f["tokens/token"] = np.zeros(50, np.int32)
    with pytest.raises(ValueError, match=rf"{path}: no /tokens/split and only 1 distinct piece"):
        train_sae(path, tmp_path / "sae")


def test_the_site_given_is_recorded_else_the_file_attribute(tmp_path):
    path, _ = minimal_acts(tmp_path / "mine.h5")
    quick = {"width": 16, "batch_size": 64, "epochs": 1}
    assert train_sae(path, tmp_path / "a", site="layer3", **quick)["site"] == "layer3"
    assert json.loads((tmp_path / "a" / "cfg.json").read_text())["metadata"]["site"] == "layer3"
    _with(path, lambda f: f.attrs.update(site="from_file"))
    assert train_sae(path, tmp_path / "b", **quick)["site"] == "from_file"
    assert train_sae(path, tmp_path / "c", site="given", **quick)["site"] == "given"
    assert main(["sae", "train", str(path), "--out", str(tmp_path / "d"), "--site", "cli", *QUICK]) == 0
    assert json.loads((tmp_path / "d" / "metrics.json").read_text())["site"] == "cli"


@pytest.fixture()
def captured(monkeypatch):
    """Replaces train_sae: records what the CLI passes, trains nothing."""
    calls = []

    def fake(acts, out, **kwargs):
        calls.append(kwargs)
        return {"site": kwargs.get("site")}

    monkeypatch.setattr("musinterp.sae.trainer.train_sae", fake)
    return calls


def test_every_setting_has_a_flag(tmp_path, captured):
    argv = ["sae", "train", "acts.h5", "--out", str(tmp_path / "sae")]
    for name in setting_names():
        argv += [f"--{name.replace('_', '-')}", "topk" if name == "arch" else "cpu" if name == "device" else "1"]
    assert main(argv) == 0
    (kwargs,) = captured
    assert kwargs.pop("site") is None
    assert sorted(kwargs) == sorted(setting_names())


def test_flags_left_out_take_the_library_defaults(tmp_path, captured):
    assert main(["sae", "train", "acts.h5", "--out", str(tmp_path / "sae")]) == 0
    assert main(["sae", "train", "acts.h5", "--out", str(tmp_path / "sae"), "--checkpoint-every", "none",
                 "--l1", "0.01", "--tokens", "500", "--site", "s"]) == 0  # fmt: skip
    assert captured == [
        {"site": None},
        {"site": "s", "checkpoint_every": None, "l1_coeff": 0.01, "max_tokens": 500},
    ]
