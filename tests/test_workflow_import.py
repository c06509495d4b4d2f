"""The checkpoint download and import rules through the snakemake command, on file:// copies.

The checkpoint is a folk-rnn pickle in the documented v2 layout with random weights (the real
file is not shipped); the corpus is a few tunes in folk-rnn token format.
"""

import numpy as np
import pytest
import torch
import yaml
from conftest import run_snakemake
from test_folkrnn_import import folkrnn_checkpoint, py2_pickle, reference_logits

from musinterp.io import git_blob_id_file
from musinterp.models import load

TUNES = """M:4/4 K:Cmaj |: G, C 2 E C G, C E C | D 2 F D A, D F D :|

M:3/4 K:Cmin c 2 B G | F E D 2 | C 6 |

M:6/8 K:Cdor G > A B c 2 d | (3 e f g c 3 |
"""


pytestmark = pytest.mark.e2e  # runs the snakemake command
def setup(tmp_path):
    tokens = ["<s>", "</s>"] + sorted({t for t in TUNES.split()}) + ["^F", "z"]
    checkpoint = folkrnn_checkpoint(tokens, hidden=8)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "folkrnn_v2.pkl").write_bytes(py2_pickle(checkpoint))
    (mirror / "tunes.txt").write_text(TUNES)
    return checkpoint, tokens, mirror


def run(workdir, mirror, model_blob):
    config = {
        "corpora": {"tunes": {"source": "download", "url": (mirror / "tunes.txt").as_uri(),
                              "git_blob": git_blob_id_file(mirror / "tunes.txt"), "format": "folkrnn"}},
        "subjects": {"v2": {"family": "folkrnn", "corpus": "tunes", "source": "download",
                            "url": (mirror / "folkrnn_v2.pkl").as_uri(), "git_blob": model_blob,
                            "sampling": {"n_samples": 1}}},
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return run_snakemake(workdir, "--cores", "1", "results/activations/v2/lstm2_h.h5", configfile=path, timeout=300)


def logs(workdir):
    return "\n".join(p.read_text() for p in (workdir / "results" / "logs").rglob("*.log"))


def test_download_verify_import_and_record(tmp_path):
    checkpoint, tokens, mirror = setup(tmp_path)
    result = run(tmp_path, mirror, git_blob_id_file(mirror / "folkrnn_v2.pkl"))
    assert result.returncode == 0, result.stderr[-3000:]
    model, meta = load(tmp_path / "results" / "models" / "v2")
    assert meta["vocab"] == tokens and meta["provenance"]["git_blob_id"] == git_blob_id_file(mirror / "folkrnn_v2.pkl")
    ids = [0, 5, 7, 9, 3]
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0].numpy()
    np.testing.assert_allclose(logits, reference_logits(checkpoint["param_values"], ids), atol=1e-5)
    assert (tmp_path / "results" / "activations" / "v2" / "lstm2_h.h5").exists()


def test_corrupt_checkpoint_rejected_with_both_checksums(tmp_path):
    _, _, mirror = setup(tmp_path)
    expected = git_blob_id_file(mirror / "folkrnn_v2.pkl")
    data = bytearray((mirror / "folkrnn_v2.pkl").read_bytes())
    data[-10] ^= 0xFF
    (mirror / "folkrnn_v2.pkl").write_bytes(bytes(data))
    result = run(tmp_path, mirror, expected)
    assert result.returncode != 0
    text = logs(tmp_path) + result.stderr
    assert expected in text and git_blob_id_file(mirror / "folkrnn_v2.pkl") in text
    assert not (tmp_path / "resources" / "downloads" / "models" / "v2" / "folkrnn_v2.pkl").exists()
    assert not (tmp_path / "results" / "models" / "v2" / "model.pt").exists()


def test_offline_file_placed_by_hand_is_verified_and_used(tmp_path):
    _, tokens, mirror = setup(tmp_path)
    blob = git_blob_id_file(mirror / "folkrnn_v2.pkl")
    placed = tmp_path / "resources" / "downloads" / "models" / "v2" / "folkrnn_v2.pkl"
    placed.parent.mkdir(parents=True)
    placed.write_bytes((mirror / "folkrnn_v2.pkl").read_bytes())
    (mirror / "folkrnn_v2.pkl").unlink()  # the URL no longer answers: offline
    result = run(tmp_path, mirror, blob)
    assert result.returncode == 0, result.stderr[-3000:]
    assert load(tmp_path / "results" / "models" / "v2")[1]["vocab"] == tokens

    placed.write_bytes(placed.read_bytes()[:-1])  # a damaged hand-placed copy is refused
    (tmp_path / "results" / "models" / "v2" / "model.pt").unlink()
    result = run(tmp_path, mirror, blob)
    assert result.returncode != 0 and "checksum mismatch" in logs(tmp_path) + result.stderr


def test_offline_without_file_says_where_to_put_it(tmp_path):
    _, _, mirror = setup(tmp_path)
    blob = git_blob_id_file(mirror / "folkrnn_v2.pkl")
    (mirror / "folkrnn_v2.pkl").unlink()
    result = run(tmp_path, mirror, blob)
    assert result.returncode != 0
    assert "put the file at resources/downloads/models/v2/folkrnn_v2.pkl" in logs(tmp_path) + result.stderr
