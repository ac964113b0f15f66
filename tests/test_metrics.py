from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ied.data import load_imageset
from ied.generate import generate
from ied.metrics import DIGITS_EXTRACTOR, MetricsError, calculate, evaluate, extractor_kwargs, train_digits_cnn
from ied.train import train

from conftest import tiny_config

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def evaluator(digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("cnn") / "digits-cnn.pt"
    accuracy = train_digits_cnn(load_imageset(digits / "train.npz"), load_imageset(digits / "test.npz"), path)
    return path, accuracy


def test_digits_evaluator_accuracy(evaluator):
    assert evaluator[1] >= 0.95


def test_fid_zero_against_itself_and_grows_with_noise(digits, evaluator):
    ref = load_imageset(digits / "test.npz").images
    rng = np.random.default_rng(0)
    fids = []
    for noise in (0, 10, 25, 50, 100):
        noisy = np.clip(ref + noise * rng.standard_normal(ref.shape), 0, 255).astype(np.uint8)
        fids.append(calculate(noisy, ref, DIGITS_EXTRACTOR, evaluator[0])["fid"])
    assert abs(fids[0]) < 1e-6
    assert all(a < b for a, b in zip(fids, fids[1:])), fids


@pytest.mark.slow
def test_trained_model_beats_untrained(digits, evaluator, tmp_path):
    cfg = tiny_config(batch_size=64, network={**tiny_config()["network"], "dropout": 0.0})
    train(cfg, 0, 1, data_path=digits / "train.npz", checkpoint_in=None, checkpoint_out=tmp_path / "c1.pt")
    train(cfg, 0, 400, data_path=digits / "train.npz", checkpoint_in=None, checkpoint_out=tmp_path / "c400.pt")
    l2 = {"family": "l2", "sigma_min": 0.002, "sigma_max": 80}
    rows = {}
    for name in ("c1", "c400"):
        generate(tmp_path / f"{name}.pt", l2, "heun", 10, tmp_path / f"{name}.npz", n_samples=200, batch_size=200)
        rows[name] = evaluate(tmp_path / f"{name}.npz", digits / "test.npz", DIGITS_EXTRACTOR, evaluator[0],
                              tmp_path / f"{name}.parquet", meta={"train_rationale": "l2"})
    print({k: round(v["fid"], 2) for k, v in rows.items()})
    assert rows["c400"]["fid"] < 0.5 * rows["c1"]["fid"]
    frame = pd.read_parquet(tmp_path / "c400.parquet")
    expected = {"train_rationale", "sampler", "steps", "sampler_options", "checkpoint_step", "seed_set", "n_samples",
                "reference_split", "extractor", "fid", "isc_mean", "isc_std", "kid_mean", "kid_std", "seconds",
                "versions"}
    assert expected <= set(frame.columns) and frame["checkpoint_step"].iloc[0] == 400


def test_inception_weights_come_from_a_checked_local_file(tmp_path):
    with pytest.raises(MetricsError, match="missing.pth: feature extractor weights not found"):
        extractor_kwargs("inception-v3-compat", tmp_path / "missing.pth")
    (tmp_path / "fake.pth").write_bytes(b"not inception")
    with pytest.raises(MetricsError, match="fake.pth: sha256 .* is not torch-fidelity's Inception weights"):
        extractor_kwargs("inception-v3-compat", tmp_path / "fake.pth")


def _shared_inception():
    candidates = sorted(SHARED_DATA.glob("**/weights-inception-2015-12-05-6726825d.pth"))
    return candidates[0] if candidates else None


@pytest.mark.skipif(_shared_inception() is None, reason="no Inception weights under ../shared/data")
def test_configured_path_matches_torch_fidelity_default(tmp_path, monkeypatch):
    """Our local-path route gives the same features as torch-fidelity's own (downloading) default."""
    import torch
    import torch_fidelity.feature_extractor_inceptionv3 as fe
    weights = _shared_inception()
    kwargs = extractor_kwargs("inception-v3-compat", weights)
    ours = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], **{
        "feature_extractor_weights_path": kwargs["feature_extractor_weights_path"]})
    # torch-fidelity's default fetches the same file by URL; serve it from the shared copy instead
    monkeypatch.setattr(fe, "load_state_dict_from_url", lambda *a, **k: torch.load(weights, weights_only=False))
    default = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(ours(x)[0], default(x)[0])
