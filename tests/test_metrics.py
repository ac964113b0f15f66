
import numpy as np
import pandas as pd
import pytest

import torch

from ied.data import load_imageset, to_uint8
from ied.generate import generate
from ied.metrics import DIGITS_EXTRACTOR, MetricsError, calculate, check_weights, evaluate, train_digits_cnn
from ied.train import train

from conftest import L2, sampling_spec, tiny_spec



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
    cfg = tiny_spec(batch_size=64, network={**tiny_spec()["network"], "dropout": 0.0})
    train(cfg, 0, 1, data_path=digits / "train.npz", checkpoint_in=None, checkpoint_out=tmp_path / "c1.pt")
    train(cfg, 0, 400, data_path=digits / "train.npz", checkpoint_in=None, checkpoint_out=tmp_path / "c400.pt")
    rows = {}
    for name in ("c1", "c400"):
        generate(tmp_path / f"{name}.pt", sampling_spec(L2, "heun", 10), tmp_path / f"{name}.npz", n_samples=200,
                 batch_size=200)
        rows[name] = evaluate(tmp_path / f"{name}.npz", digits / "test.npz", DIGITS_EXTRACTOR, evaluator[0],
                              tmp_path / f"{name}.parquet", cell={"train_rationale": "l2"})
    print({k: round(v["fid"], 2) for k, v in rows.items()})
    assert rows["c400"]["fid"] < 0.5 * rows["c1"]["fid"]
    frame = pd.read_parquet(tmp_path / "c400.parquet")
    expected = {"train_rationale", "sampler", "steps", "sampler_options", "checkpoint_step", "seed_set", "n_samples",
                "reference_split", "extractor", "fid", "isc_mean", "isc_std", "kid_mean", "kid_std", "seconds",
                "versions", "degenerate", "saturated", "nfe"}
    assert expected <= set(frame.columns) and frame["checkpoint_step"].iloc[0] == 400


def test_inception_weights_come_from_a_checked_local_file(tmp_path):
    with pytest.raises(MetricsError, match="missing.pth: feature extractor weights not found"):
        check_weights(tmp_path / "missing.pth", "6726825d")
    (tmp_path / "fake.pth").write_bytes(b"not inception")
    with pytest.raises(MetricsError, match="fake.pth: sha256 .* does not start with the expected 6726825d"):
        check_weights(tmp_path / "fake.pth", "6726825d")


def test_configured_path_matches_torch_fidelity_default(inception, monkeypatch):
    """Our local-path route gives the same features as torch-fidelity's own (downloading) default."""
    import torch
    import torch_fidelity.feature_extractor_inceptionv3 as fe
    from ied.io import sha256_file
    ours = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(
        check_weights(inception, sha256_file(inception)[:8])))
    # torch-fidelity's default fetches its file by URL; serve the same weights file instead
    monkeypatch.setattr(fe, "load_state_dict_from_url", lambda *a, **k: torch.load(inception, weights_only=False))
    default = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(ours(x)[0], default(x)[0])


def test_a_digits_evaluation_imports_neither_torch_fidelity_nor_torchvision(digits, evaluator, tmp_path):
    """Their package imports cost an evaluation job about 3 s of start-up; the digits route needs neither."""
    import subprocess
    import sys

    from ied.data import ImageSet, save_imageset
    ref = load_imageset(digits / "test.npz")
    save_imageset(tmp_path / "s.npz", ImageSet(ref.images[::-1].copy(), ref.labels, 10), generation="{}")
    code = (f"import sys; from ied.metrics import evaluate; evaluate({str(tmp_path / 's.npz')!r}, "
            f"{str(digits / 'test.npz')!r}, {DIGITS_EXTRACTOR!r}, {str(evaluator[0])!r}, "
            f"{str(tmp_path / 'row.parquet')!r}); print(sorted({{'torch_fidelity', 'torchvision'}} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]" and (tmp_path / "row.parquet").exists()


def test_degenerate_sets_are_flagged():
    from ied.metrics import degenerate
    rng = np.random.default_rng(0)
    usable = rng.integers(0, 256, (100, 1, 8, 8), dtype=np.uint8)
    assert degenerate(usable) is None
    black = np.zeros_like(usable)
    assert "constant" in degenerate(black)
    repeated = np.repeat(usable[:2], 50, axis=0)
    assert "2 distinct images" in degenerate(repeated)


def test_a_set_almost_all_clipped_is_degenerate_beside_what_its_reference_holds():
    """Raw values far outside the image range (a UniPC set reached ±4.3e4) land at 0 or 255 after quantisation: the
    share of pixels inside (0, 255) must keep a tenth of the reference's, or the set is never ranked."""
    from ied.metrics import degenerate, saturated
    rng = np.random.default_rng(0)
    raw = rng.normal(0, 4e4, (360, 1, 8, 8))
    raw[:, :, :2] = rng.normal(0, 0.5, (360, 1, 2, 8))  # a quarter of each image still in range
    clipped = to_uint8(torch.from_numpy(raw)).numpy()
    share = saturated(clipped)
    assert share == pytest.approx(np.mean((clipped == 0) | (clipped == 255)))
    assert 0.75 < share < 0.95
    assert degenerate(clipped, reference_saturated=0.0) is None  # against statistics: degenerate above 90 %
    assert degenerate(clipped, reference_saturated=0.95) is None  # 1 − share > 0.1 × 0.05
    clipped[:, :, :2] = np.where(rng.random((360, 1, 2, 8)) < 0.995, 255, 7)  # 99.9 % saturated
    assert "99.88% of the pixels are saturated" in degenerate(clipped, reference_saturated=0.58) and "(the reference: 58%)" in \
        degenerate(clipped, reference_saturated=0.58)
    digits_like = np.where(rng.random((360, 1, 8, 8)) < 0.58, 0, rng.integers(1, 255, (360, 1, 8, 8))).astype(np.uint8)
    assert degenerate(digits_like, reference_saturated=0.58) is None


def test_reference_cache_is_keyed_by_extractor_weights(digits, evaluator, tmp_path):
    """A retrained extractor must not reuse the reference statistics of the old one."""
    from ied.metrics import reference_cache_name
    other = tmp_path / "other.pt"
    other.write_bytes(evaluator[0].read_bytes() + b"\0")
    ref = digits / "test.npz"
    assert reference_cache_name(ref, DIGITS_EXTRACTOR, evaluator[0]) != reference_cache_name(ref, DIGITS_EXTRACTOR, other)


def test_scores_equal_torch_fidelitys_own_calculate_metrics(digits, evaluator):
    """calculate() extracts the features itself and scores them with `ied.fidelity`: torch-fidelity's numbers."""
    from fidelity_reference import calculate_metrics, digits_kwargs

    ref = load_imageset(digits / "test.npz").images
    gen = np.clip(ref + 30 * np.random.default_rng(1).standard_normal(ref.shape), 0, 255).astype(np.uint8)
    ours = calculate(gen, ref, DIGITS_EXTRACTOR, evaluator[0])
    theirs = calculate_metrics(gen, ref, **digits_kwargs(evaluator[0]))
    assert ours == {"fid": theirs["frechet_inception_distance"], "isc_mean": theirs["inception_score_mean"],
                    "isc_std": theirs["inception_score_std"], "kid_mean": theirs["kernel_inception_distance_mean"],
                    "kid_std": theirs["kernel_inception_distance_std"], "precision": theirs["precision"],
                    "recall": theirs["recall"]}


@pytest.mark.slow  # Inception at 299×299 on the CPU, twice: about half a minute
def test_inception_scores_equal_torch_fidelitys(inception):
    """The Inception route: the same numbers as torch-fidelity's calculate_metrics on the same weights file."""
    from fidelity_reference import calculate_metrics

    rng = np.random.default_rng(3)
    ref = rng.integers(0, 256, (24, 3, 32, 32), dtype=np.uint8)
    gen = np.clip(ref + 60 * rng.standard_normal(ref.shape), 0, 255).astype(np.uint8)
    ours = calculate(gen, ref, "inception-v3-compat", inception)
    theirs = calculate_metrics(gen, ref, feature_extractor="inception-v3-compat",
                               feature_extractor_weights_path=str(inception))
    assert ours == {"fid": theirs["frechet_inception_distance"], "isc_mean": theirs["inception_score_mean"],
                    "isc_std": theirs["inception_score_std"], "kid_mean": theirs["kernel_inception_distance_mean"],
                    "kid_std": theirs["kernel_inception_distance_std"], "precision": theirs["precision"],
                    "recall": theirs["recall"]}


def test_a_damaged_reference_cache_is_moved_aside_and_recomputed(digits, evaluator, tmp_path):
    ref = load_imageset(digits / "test.npz").images
    gen = ref[::-1].copy()
    kwargs = dict(cache_root=tmp_path, reference_cache_name="ref")
    first = calculate(gen, ref, DIGITS_EXTRACTOR, evaluator[0], **kwargs)
    cache = tmp_path / "ref.npz"
    assert cache.exists() and [p.name for p in tmp_path.iterdir()] == ["ref.npz"]  # no torch pickle beside it
    assert calculate(gen, np.zeros_like(ref), DIGITS_EXTRACTOR, evaluator[0], **kwargs) == first  # read, not recomputed
    cache.write_bytes(cache.read_bytes()[:500])  # truncated, as a killed copy would leave it
    assert calculate(gen, ref, DIGITS_EXTRACTOR, evaluator[0], **kwargs) == first
    assert (tmp_path / "ref.npz.corrupt").exists() and cache.exists()
    from ied.metrics import _read_features
    _read_features(cache)  # rewritten whole


def test_inception_weights_are_read_as_tensors_only(tmp_path):
    """A weights file whose pickle would run a command is refused, even when its digest matches the config."""
    import os

    import torch

    from ied.io import sha256_file

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'ran'}",)

    path = tmp_path / "weights.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": Payload()}, path)
    gen = np.random.default_rng(0).integers(0, 256, (40, 3, 32, 32), dtype=np.uint8)
    with pytest.raises(MetricsError, match="weights.pth: not a plain tensor file, refused"):
        calculate(gen, gen, "inception-v3-compat", path, sha256=sha256_file(path))
    assert not (tmp_path / "ran").exists()


def test_fid_against_published_statistics_equals_fid_against_the_images(digits, evaluator, tmp_path):
    """Statistics (mu, sigma) of the reference's features in an .npz, as NVlabs publishes them, give the FID the
    images give; KID, precision and recall need the reference's features and are NaN."""
    import torch

    from ied.fidelity import fid_statistics
    from ied.metrics import evaluate, extract, extractor
    ref = load_imageset(digits / "test.npz").images
    gen = np.clip(ref + 40 * np.random.default_rng(2).standard_normal(ref.shape), 0, 255).astype(np.uint8)
    paired = calculate(gen, ref, DIGITS_EXTRACTOR, evaluator[0])
    features, layers = extractor(DIGITS_EXTRACTOR, evaluator[0], torch.device("cpu"))
    stats = fid_statistics(extract(ref, features, 256, torch.device("cpu"))[layers["fid"]])
    np.savez(tmp_path / "refs.npz", mu=stats["mu"].astype(np.float64), sigma=stats["sigma"])
    alone = calculate(gen, None, DIGITS_EXTRACTOR, evaluator[0], reference_statistics=(
        stats["mu"].astype(np.float64), stats["sigma"]))
    assert alone["fid"] == pytest.approx(paired["fid"], rel=1e-5) and alone["isc_mean"] == paired["isc_mean"]
    assert all(np.isnan(alone[k]) for k in ("kid_mean", "kid_std", "precision", "recall"))
    # through evaluate(): the row names the statistics; images of another shape are refused
    from ied.data import ImageSet, save_imageset
    save_imageset(tmp_path / "s.npz", ImageSet(gen, np.zeros(len(gen), np.int64), 10), generation="{}")
    row = evaluate(tmp_path / "s.npz", None, DIGITS_EXTRACTOR, evaluator[0], tmp_path / "row.parquet",
                   reference_statistics=tmp_path / "refs.npz", expect_shape=(1, 8, 8))
    assert row["reference_split"] == "statistics:refs.npz" and row["fid"] == pytest.approx(paired["fid"], rel=1e-5)
    with pytest.raises(MetricsError, match=r"images of shape \(1, 8, 8\), but the reference is uint8 \(3, 32, 32\)"):
        evaluate(tmp_path / "s.npz", None, DIGITS_EXTRACTOR, evaluator[0], tmp_path / "x.parquet",
                 reference_statistics=tmp_path / "refs.npz", expect_shape=(3, 32, 32))
    np.savez(tmp_path / "bad.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(MetricsError, match=r"bad.npz: mu \(2048,\) and sigma \(2048, 2048\) are not the statistics "
                                           r"of 128-dimensional features"):
        evaluate(tmp_path / "s.npz", None, DIGITS_EXTRACTOR, evaluator[0], tmp_path / "x.parquet",
                 reference_statistics=tmp_path / "bad.npz", expect_shape=(1, 8, 8))


def test_samples_are_quantised_as_the_datasets_images():
    """Generated images are rounded as EDM saves them (floor of x·127.5 + 128, clipped), which maps each dataset
    value i/127.5 − 1 back to i: samples and reference share one quantisation."""
    import torch

    from ied.data import to_model_range, to_uint8
    values = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_uint8(to_model_range(values)), values)
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.999, 1.0, 3.0])
    assert to_uint8(x).tolist() == [0, 0, 64, 128, 255, 255, 255]


def test_a_non_finite_score_flags_the_row(digits, tmp_path, monkeypatch):
    """A NaN FID, or a NaN KID where a reference split gives one, marks the row degenerate (never ranked); against
    published statistics KID is NaN by definition and the row stands."""
    import ied.metrics
    from ied.data import ImageSet, save_imageset
    images = np.random.default_rng(0).integers(0, 256, (40, 1, 8, 8), dtype=np.uint8)
    save_imageset(tmp_path / "s.npz", ImageSet(images, np.zeros(40, np.int64), 10), generation="{}")
    np.savez(tmp_path / "refs.npz", mu=np.zeros(128), sigma=np.eye(128))

    def scores(fid, kid):
        return lambda *a, **k: {"fid": fid, "isc_mean": 1.0, "isc_std": 0.0, "kid_mean": kid, "kid_std": 0.0,
                                "precision": 0.5, "recall": 0.5}

    def flag(reference, fid, kid):
        monkeypatch.setattr(ied.metrics, "calculate", scores(fid, kid))
        statistics = tmp_path / "refs.npz" if reference is None else None
        return evaluate(tmp_path / "s.npz", reference, DIGITS_EXTRACTOR, "weights.pt", tmp_path / "row.parquet",
                        reference_statistics=statistics, expect_shape=(1, 8, 8))["degenerate"]

    assert flag(digits / "test.npz", 3.0, 0.1) == ""
    assert flag(digits / "test.npz", 3.0, float("nan")) == "non-finite score"
    assert flag(digits / "test.npz", float("inf"), 0.1) == "non-finite score"
    assert flag(None, 3.0, float("nan")) == ""
    assert flag(None, float("nan"), float("nan")) == "non-finite score"
