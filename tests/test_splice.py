"""Loss recovered: the SAE's reconstruction spliced back into the model."""

import numpy as np
import pytest
import torch

from musinterp.activations import ActivationFile, record_activations
from musinterp.sae.saelens import saelens_cfg, save_sae
from musinterp.splice import add_loss_recovered


def loss_recovered(model_dir, acts_path, sae_dir, site="lstm0_h"):
    """Splice through the public entry point; metrics.json starts empty."""
    (sae_dir / "metrics.json").write_text("{}")
    return add_loss_recovered(sae_dir, model_dir, acts_path, site=site)


def write_sae(path, W_enc, b_enc, W_dec, b_dec):
    d_in, d_sae = W_enc.shape
    cfg = saelens_cfg("standard", d_in, d_sae, subject="s", site="lstm0_h", provenance={"test": True})
    tensors = {name: torch.as_tensor(t, dtype=torch.float32).contiguous()
               for name, t in dict(W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec).items()}
    save_sae(path, tensors, cfg)


@pytest.fixture()
def spliceable(tiny_subject):
    tmp_path, corpus = tiny_subject
    record_activations(tmp_path / "model", tmp_path / "corpus", tmp_path / "acts", subject="s",
                       sites=["lstm0_h", "softmax"])
    d = 12
    eye = np.eye(d)
    # ReLU(x) − ReLU(−x) = x: an SAE of width 2d that reconstructs exactly.
    write_sae(tmp_path / "identity", np.hstack([eye, -eye]), np.zeros(2 * d), np.vstack([eye, -eye]), np.zeros(d))
    write_sae(tmp_path / "nothing", np.hstack([eye, -eye]), np.zeros(2 * d), np.zeros((2 * d, d)), np.zeros(d))
    return tmp_path


def test_clean_loss_matches_recorded_softmax(spliceable):
    tmp_path = spliceable
    result = loss_recovered(tmp_path / "model", tmp_path / "acts" / "lstm0_h.h5", tmp_path / "identity")
    # Independent reference: −log p(next token) from the softmax site recorded step by step.
    with ActivationFile(tmp_path / "acts" / "softmax.h5") as f:
        held = f.column("split") == 1
        probs = f.acts[:][held]
        nll = -np.log(probs[np.arange(len(probs)), f.column("next_token")[held]])
    assert result["splice_tokens"] == len(nll)
    assert result["loss_clean"] == pytest.approx(nll.mean(), abs=1e-5)


def test_exact_reconstruction_recovers_everything(spliceable):
    tmp_path = spliceable
    result = loss_recovered(tmp_path / "model", tmp_path / "acts" / "lstm0_h.h5", tmp_path / "identity")
    assert result["loss_sae"] == pytest.approx(result["loss_clean"], abs=1e-6)
    assert result["loss_zero"] != pytest.approx(result["loss_clean"], abs=1e-4)
    assert result["loss_recovered"] == pytest.approx(1.0, abs=1e-4)


def test_zero_reconstruction_recovers_nothing(spliceable):
    tmp_path = spliceable
    result = loss_recovered(tmp_path / "model", tmp_path / "acts" / "lstm0_h.h5", tmp_path / "nothing")
    assert result["loss_recovered"] == pytest.approx(0.0, abs=1e-6)


def test_dimension_mismatch_is_named(spliceable):
    tmp_path = spliceable
    with pytest.raises(ValueError, match="d_in=12 but .*softmax.h5 has d="):
        loss_recovered(tmp_path / "model", tmp_path / "acts" / "softmax.h5", tmp_path / "identity", site="lstm0_h")


def test_metrics_json_gains_loss_recovered(spliceable):
    import json

    tmp_path = spliceable
    for name in ("identity", "nothing"):
        (tmp_path / name / "metrics.json").write_text(json.dumps({"fvu": 0.0}))
    metrics = add_loss_recovered(tmp_path / "identity", tmp_path / "model", tmp_path / "acts" / "lstm0_h.h5",
                                 site="lstm0_h")
    saved = json.loads((tmp_path / "identity" / "metrics.json").read_text())
    assert saved == metrics and saved["fvu"] == 0.0 and saved["loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    record_activations(tmp_path / "model", tmp_path / "corpus", tmp_path / "acts", subject="s", sites=["lstm0_c"])
    metrics = add_loss_recovered(tmp_path / "nothing", tmp_path / "model", tmp_path / "acts" / "lstm0_c.h5",
                                 site="lstm0_c")
    assert metrics["loss_recovered"] is None and "cannot splice site 'lstm0_c'" in metrics["splice_note"]
