"""The musinterp command line, stage by stage, on a tiny corpus."""

import json
import pickle
import subprocess
import sys

from musinterp.cli import main


def test_stages_chain_on_the_command_line(tmp_path, capsys):
    corpus, model, acts = tmp_path / "corpus", tmp_path / "model", tmp_path / "acts"
    assert main(["corpus", "build", "--name", "t", "--source", "music21", "--collections", "airdsAirs",
                 "--max-tunes", "30", "--out", str(corpus)]) == 0
    assert main(["model", "train", "--corpus", str(corpus), "--out", str(model), "--hidden-size", "16",
                 "--n-layers", "1", "--epochs", "1", "--samples", "1"]) == 0
    assert main(["activations", "record", "--model", str(model), "--corpus", str(corpus), "--out", str(acts),
                 "--subject", "t", "--sites", "lstm0_h"]) == 0
    assert main(["sae", "train", str(acts / "lstm0_h.h5"), "--arch", "topk", "--width", "32", "--k", "4",
                 "--batch-size", "256", "--model", str(model), "--out", str(tmp_path / "sae")]) == 0
    metrics = json.loads((tmp_path / "sae" / "metrics.json").read_text())
    assert metrics["l0"] <= 4 and "loss_recovered" in metrics
    assert main(["features", "build", str(acts / "lstm0_h.h5"), str(tmp_path / "sae"),
                 "--out", str(tmp_path / "f.parquet")]) == 0
    assert (tmp_path / "f.parquet").exists()


def test_bad_input_exits_nonzero_with_message(tmp_path, caplog):
    assert main(["sae", "train", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "sae")]) == 1
    assert "missing.h5" in caplog.text
    assert not (tmp_path / "sae").exists()


def test_import_refuses_unsafe_pickle(tmp_path, caplog):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (subprocess.call, (["touch", str(marker)],))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"param_values": [Evil()], "token2idx": {}}, protocol=2))
    assert main(["import", "folkrnn", str(path), "--out", str(tmp_path / "model")]) == 1
    assert "evil.pkl" in caplog.text and not marker.exists() and not (tmp_path / "model").exists()


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "musinterp.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for stage in ("corpus", "model", "import", "activations", "sae", "features"):
        assert stage in result.stdout
