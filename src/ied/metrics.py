"""Scoring sample sets: FID, IS, KID, precision and recall (`ied.fidelity`) on the features of Inception
(torch-fidelity's) or of a digits CNN, and the result row of one evaluation."""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import pickle
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ied.data import DIGITS_CNN, INCEPTION, ImageSet, generation_info, load_imageset
from ied.io import CorruptFileError, atomic_path, content_sha256, quarantine

DIGITS_EXTRACTOR = DIGITS_CNN


class MetricsError(RuntimeError):
    """A missing or wrong feature-extractor file, or unusable inputs; the message names the file."""


class DigitsCNN(nn.Module):
    """A small classifier for 8×8 digits: 128 penultimate features (FID/KID), 10 logits (IS)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, padding=1), nn.Conv2d(32, 64, 3, padding=1)
        self.fc, self.head = nn.Linear(64 * 4 * 4, 128), nn.Linear(128, 10)

    def features(self, x_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x_uint8.float() / 127.5 - 1.0
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        feats = F.relu(self.fc(x.flatten(1)))
        return feats, self.head(feats)


def train_digits_cnn(train: ImageSet, test: ImageSet, out: str | Path, epochs: int = 30, seed: int = 0) -> float:
    """Train the digits evaluator on the train split; save it; return its test accuracy."""
    torch.manual_seed(seed)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = torch.from_numpy(train.images), torch.from_numpy(train.labels)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            xb = x[idx]
            shift = torch.randint(-1, 2, (2,), generator=gen).tolist()  # ±1 pixel translation
            xb = torch.roll(xb, shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model.features(xb)[1], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model.features(torch.from_numpy(test.images))[1].argmax(1).numpy() == test.labels).mean()
    with atomic_path(out) as tmp:
        torch.save({"state_dict": model.state_dict(), "test_accuracy": float(accuracy)}, tmp)
    return float(accuracy)


def check_weights(weights_path: str | Path, sha256: str | None = None) -> Path:
    """The extractor's local weights file (never downloaded), its digest checked if `sha256` is given (the full
    digest or its leading hex digits, torch.hub's convention)."""
    path = Path(weights_path)
    if not path.is_file():
        raise MetricsError(f"{path}: feature extractor weights not found (feature_extractor_weights_path)")
    if sha256 is not None:
        digest = content_sha256(path)
        if not digest.startswith(sha256):
            raise MetricsError(f"{path}: sha256 {digest[:12]}… does not start with the expected {sha256}")
    return path


SATURATED_KEPT = 0.1  # a set keeps at least this share of the reference's unsaturated pixels, else it is degenerate


def saturated(images: np.ndarray) -> float:
    """The share of uint8 pixels at 0 or 255: where the sampler's values were clipped (or the data is binary)."""
    return float(np.mean((images == 0) | (images == 255)))


def degenerate(images: np.ndarray, reference_saturated: float = 0.0) -> str | None:
    """Why a sample set must not be ranked (constant, all-alike or almost all clipped images), or None if it is
    usable. Clipped: fewer than SATURATED_KEPT of the reference's unsaturated share of pixels lie inside (0, 255)
    (digits: 58 % of the reference's pixels are 0 or 255, so a set at more than 96 %; a set scored against
    statistics only, more than 90 %)."""
    flat = images.reshape(len(images), -1).astype(np.int16)
    constant = float(np.mean(flat.max(axis=1) - flat.min(axis=1) <= 2))
    if constant > 0.5:
        return f"{constant:.0%} of the images are constant"
    share = saturated(images)
    if 1.0 - share < SATURATED_KEPT * (1.0 - reference_saturated):
        return (f"{share:.2%} of the pixels are saturated at 0 or 255 (the reference: {reference_saturated:.0%}): "
                f"the sampler's values left the image range")
    distinct = len(np.unique(flat, axis=0))
    if distinct < max(2, len(images) // 20):
        return f"only {distinct} distinct images in {len(images)}"
    return None


@contextlib.contextmanager
def tensors_only(weights_path: str | Path) -> Iterator[None]:
    """torch-fidelity loads Inception weights with weights_only=False, which runs any pickle: allow tensors only."""
    original = torch.load

    def load(*args, **kwargs):
        kwargs["weights_only"] = True
        try:
            return original(*args, **kwargs)
        except pickle.UnpicklingError as err:
            raise MetricsError(f"{weights_path}: not a plain tensor file, refused "
                               f"({str(err).splitlines()[0][:200]})") from None

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def _features_digest(features: Mapping[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(features):
        array = np.ascontiguousarray(features[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _read_features(path: Path) -> dict[str, torch.Tensor]:
    """Cached reference features (our .npz with its checksum; no pickle is read)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            features = {name: npz[f"feature_{name}"] for name in meta["features"]}
    except Exception as err:  # zip, key or JSON damage all mean the same
        raise CorruptFileError(path, f"unreadable or truncated reference features ({type(err).__name__})") from None
    if _features_digest(features) != meta.get("sha256"):
        raise CorruptFileError(path, "checksum mismatch; the cached reference features are corrupt")
    return {name: torch.from_numpy(array) for name, array in features.items()}


def _write_features(path: Path, features: Mapping[str, torch.Tensor]) -> None:
    arrays = {name: tensor.cpu().numpy() for name, tensor in features.items()}
    meta = {"features": sorted(arrays), "sha256": _features_digest(arrays)}
    with atomic_path(path, shared=True) as tmp:  # evaluation jobs running at once share the cache
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **{f"feature_{k}": v for k, v in arrays.items()})


def cached_features(path: Path | None, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Reference features from the cache file `path` (None: no cache), computed and cached when absent. A damaged
    cache file is moved aside to `<name>.corrupt` and computed again, so a truncated cache never stops a job twice."""
    if path is not None and path.exists():
        try:
            return _read_features(path)
        except CorruptFileError as err:
            print(json.dumps({"event": "reference features recomputed", "reason": str(err),
                              "moved_to": str(quarantine(path))}), file=sys.stderr)
    features = compute()
    if path is not None:
        _write_features(path, features)
    return features


Extractor = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def _digits_extractor(weights_path: str | Path, device: torch.device) -> tuple[Extractor, dict[str, str]]:
    model = DigitsCNN()
    model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True)["state_dict"])
    model.requires_grad_(False).eval().to(device)
    layers = {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}
    return lambda x: dict(zip(("features", "logits"), model.features(x))), layers


def _inception_extractor(weights_path: str | Path, device: torch.device) -> tuple[Extractor, dict[str, str]]:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    layers = {metric: FeatureExtractorInceptionV3.get_default_feature_layer_for_metric(metric)
              for metric in ("isc", "fid", "kid", "prc")}
    names = sorted(set(layers.values()))
    with tensors_only(weights_path):
        model = FeatureExtractorInceptionV3(INCEPTION, names, feature_extractor_weights_path=str(weights_path))
    model.requires_grad_(False).eval().to(device)
    return lambda x: dict(zip(names, model(x))), layers


def extractor(name: str, weights_path: str | Path, device: torch.device, sha256: str | None = None
              ) -> tuple[Extractor, dict[str, str]]:
    """The feature extractor (uint8 batch → features by name) and the feature each metric reads."""
    builders = {INCEPTION: _inception_extractor, DIGITS_EXTRACTOR: _digits_extractor}
    if name not in builders:
        raise MetricsError(f"unknown feature extractor {name!r}")
    return builders[name](check_weights(weights_path, sha256), device)


def extract(images: np.ndarray, features: Extractor, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Features of uint8 N×C×H×W images, in batches, on the CPU."""
    out: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for batch in torch.from_numpy(np.ascontiguousarray(images)).split(min(batch_size, len(images))):
            for name, value in features(batch.to(device)).items():
                out.setdefault(name, []).append(value.cpu())
    return {name: torch.cat(values) for name, values in out.items()}


def calculate(generated: np.ndarray, reference: np.ndarray | None, extractor_name: str, weights_path: str | Path, *,
              sha256: str | None = None, cache_root: str | Path | None = None,
              reference_cache_name: str | None = None, isc: bool = True, batch_size: int = 256,
              device: str = "auto", reference_statistics: tuple[np.ndarray, np.ndarray] | None = None,
              bootstrap: int = 0) -> dict[str, Any]:
    """FID, IS (10 splits), KID, and precision and recall (k = 3, Kynkäänniemi et al.) of `generated` against
    `reference` (uint8 N×C×H×W), all on the one extractor's features, as torch-fidelity computes them.

    The reference's features are cached under `cache_root` as `<reference_cache_name>.npz` (checksummed). With
    `reference_statistics` (mu, sigma) instead of reference images, FID is computed against them (in float64, as
    published statistics are) and KID, precision and recall, which need the reference's features, are NaN.

    `bootstrap` > 0: each score's 95 % interval over that many resamples of the generated images (the reference
    fixed), `<score>_lo` and `<score>_hi` (`intervals`)."""
    from ied import fidelity
    from ied.device import choose

    where = choose(device)
    features, layers = extractor(extractor_name, weights_path, where, sha256)
    gen = extract(generated, features, batch_size, where)
    result = {"kid_mean": math.nan, "kid_std": math.nan, "precision": math.nan, "recall": math.nan}
    if reference is not None:
        cache = Path(cache_root) / f"{reference_cache_name}.npz" if cache_root and reference_cache_name else None
        ref = cached_features(cache, lambda: extract(reference, features, batch_size, where))
        result["fid"] = fidelity.frechet_distance(fidelity.fid_statistics(gen[layers["fid"]]),
                                                  fidelity.fid_statistics(ref[layers["fid"]]))
        subset = min(fidelity.KID_SUBSET_SIZE, len(generated) // 2, len(reference) // 2)  # subsets must differ
        result["kid_mean"], result["kid_std"] = fidelity.kernel_inception_distance(
            gen[layers["kid"]], ref[layers["kid"]], subset_size=subset)
        result["precision"], result["recall"] = fidelity.precision_recall(gen[layers["prc"]], ref[layers["prc"]])
    else:
        ours = {k: np.asarray(v, np.float64) for k, v in fidelity.fid_statistics(gen[layers["fid"]]).items()}
        mu, sigma = reference_statistics
        if mu.shape != ours["mu"].shape:
            raise MetricsError(f"the reference statistics are of {mu.shape[0]}-dimensional features, "
                               f"{extractor_name}'s FID features have {ours['mu'].shape[0]}")
        result["fid"] = fidelity.frechet_distance(ours, {"mu": mu, "sigma": sigma})
    result["isc_mean"], result["isc_std"] = (fidelity.inception_score(gen[layers["isc"]]) if isc
                                             else (math.nan, math.nan))
    scores = {key: float(result[key]) for key in ("fid", "isc_mean", "isc_std", "kid_mean", "kid_std", "precision",
                                                   "recall")}
    if bootstrap:
        reference_fid = fidelity.fid_statistics(ref[layers["fid"]]) if reference is not None else \
            {"mu": reference_statistics[0], "sigma": reference_statistics[1]}
        on_device = {name: value.to(where) for name, value in gen.items()}  # the resamples' algebra: the GPU's work
        scores.update(intervals(on_device, None if reference is None else {k: v.to(where) for k, v in ref.items()},
                                layers, reference_fid, bootstrap, isc))
    return scores


INTERVAL_SCORES = ("fid", "isc_mean", "kid_mean", "precision", "recall")


def intervals(gen: Mapping[str, torch.Tensor], ref: Mapping[str, torch.Tensor] | None, layers: Mapping[str, str],
              reference_fid: Mapping[str, np.ndarray], resamples: int, isc: bool = True) -> dict[str, Any]:
    """95 % bootstrap intervals of FID, IS, KID, precision and recall over `resamples` resamples of the generated
    features (the reference fixed; ied.fidelity.centred_interval), as `<score>_lo`, `<score>_hi`; NaN where the
    score is.
    An interval whose resamples all agree (a constant or all-alike set) is degenerate: NaN, and `interval` says so."""
    from ied import fidelity

    counts = fidelity.resample_counts(len(gen[layers["fid"]]), resamples)
    replicates = {"fid": fidelity.bootstrap_fid(gen[layers["fid"]], reference_fid, counts)}
    if isc:
        replicates["isc_mean"] = fidelity.bootstrap_inception_score(gen[layers["isc"]], counts)
    if ref is not None:
        replicates["kid_mean"] = fidelity.bootstrap_kid(gen[layers["kid"]], ref[layers["kid"]], counts)
        replicates["precision"], replicates["recall"] = fidelity.bootstrap_precision_recall(
            gen[layers["prc"]], ref[layers["prc"]], counts)
    out: dict[str, Any] = {"bootstrap": resamples}
    flat = []
    for score in INTERVAL_SCORES:
        values = replicates.get(score)
        usable = values is not None and bool(np.isfinite(values).all()) \
            and float(np.ptp(values)) > 1e-9 * max(1.0, float(np.abs(values).max()))  # not one value but for rounding
        if values is not None and not usable:
            flat.append(score)
        out[f"{score}_lo"], out[f"{score}_hi"] = fidelity.centred_interval(values) if usable else (math.nan, math.nan)
    out["interval"] = f"degenerate: every resample gives one {', '.join(flat)}" if flat else ""
    return out


def reference_cache_name(reference: str | Path, extractor: str, weights_path: str | Path) -> str:
    """Cached reference features are valid for this reference file's content, extractor and weights only."""
    return (f"{Path(reference).stem}-{content_sha256(reference)[:12]}-{extractor}-"
            f"{content_sha256(weights_path)[:12]}-features")


def evaluate(samples: str | Path, reference: str | Path | None, extractor: str, weights_path: str | Path,
             out: str | Path, *, cell: Mapping[str, Any] | None = None, sha256: str | None = None,
             cache_root: str | Path | None = None, batch_size: int = 256, device: str = "auto",
             reference_statistics: str | Path | None = None, expect_shape: tuple[int, ...] | None = None,
             bootstrap: int = 0) -> dict[str, Any]:
    """Score one samples file against the reference split (or published reference statistics) and write the result
    row as Parquet.

    The samples must be images as the reference's are: uint8 (quantised as the dataset's images were) of the same
    channels and size (`expect_shape` when only statistics are given). A degenerate set (constant, all-alike or
    almost all clipped images) is scored but flagged, so the tables never rank it; the row holds the share of
    saturated pixels."""
    from importlib.metadata import version

    import pandas as pd

    from ied.data import FID_FEATURES, DataError, read_fid_statistics

    if (reference is None) == (reference_statistics is None):
        raise MetricsError("score against a reference split or reference statistics, one of the two")
    tick = time.perf_counter()
    gen = load_imageset(samples)
    info = generation_info(samples)
    ref = None if reference is None else load_imageset(reference)
    expected = tuple(expect_shape) if ref is None else ref.images.shape[1:]
    if gen.images.dtype != np.uint8 or (expected and gen.images.shape[1:] != tuple(expected)):
        raise MetricsError(f"{samples}: {gen.images.dtype} images of shape {gen.images.shape[1:]}, but the reference "
                           f"is uint8 {tuple(expected)}: not images of this dataset")
    statistics = None
    if reference_statistics is not None:
        try:
            statistics = read_fid_statistics(reference_statistics, FID_FEATURES.get(extractor))
        except DataError as err:
            raise MetricsError(str(err)) from None
    cache_name = reference_cache_name(reference, extractor, weights_path) if cache_root and ref is not None else None
    scores = calculate(gen.images, None if ref is None else ref.images, extractor, weights_path, sha256=sha256,
                       cache_root=cache_root, reference_cache_name=cache_name, batch_size=batch_size, device=device,
                       reference_statistics=statistics, bootstrap=bootstrap)
    problem = degenerate(gen.images, 0.0 if ref is None else saturated(ref.images))
    scored = ("fid", "kid_mean") if ref is not None else ("fid",)  # KID needs the reference's features
    if problem is None and not all(math.isfinite(scores[k]) for k in scored):
        problem = "non-finite score"
    source = Path(reference).stem if ref is not None else f"statistics:{Path(reference_statistics).name}"
    row = {**dict(cell or {}), "sampler": info.get("sampler"), "steps": info.get("steps"), "nfe": info.get("nfe"),
           "sampler_options": json.dumps(info.get("options", {}), sort_keys=True),
           "checkpoint_step": info.get("checkpoint_step"), "seed_set": info.get("seed_set"),
           "n_samples": len(gen), "reference_split": source, "extractor": extractor, **scores,
           "degenerate": problem or "", "saturated": saturated(gen.images), "seconds": time.perf_counter() - tick,
           "versions": json.dumps({"torch": torch.__version__, "torch_fidelity": version("torch-fidelity"),
                                   "python": platform.python_version()})}
    with atomic_path(out) as tmp:
        pd.DataFrame([row]).to_parquet(tmp, index=False)
    return row


CELL_COLUMNS = ["train_rationale", "sample_rationale", "sampler_name", "checkpoint_step", "seed_set", "n_samples"]


def aggregate(rows: list[str | Path], distances: list[str | Path] = ()) -> "pd.DataFrame":
    """Every metrics row in one table, each deterministic cell's distance from the probability-flow solution
    (ied.reference) joined on its cell (NaN where a cell has none)."""
    import pandas as pd

    frame = pd.concat([pd.read_parquet(p) for p in rows], ignore_index=True)
    if len(distances):
        distance = pd.concat([pd.read_parquet(p) for p in distances], ignore_index=True)
        frame = frame.merge(distance, on=CELL_COLUMNS, how="left", validate="one_to_one")
    return frame
