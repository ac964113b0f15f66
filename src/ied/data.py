"""Datasets in one prepared on-disk format: uint8 images N×C×H×W, int64 labels, and a checksum.

Torch-free at import (tensor helpers use tensor methods): the Snakefile reads DATASETS while it parses.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

from ied.io import CorruptFileError, atomic_path

if TYPE_CHECKING:
    import torch

INCEPTION = "inception-v3-compat"  # torch-fidelity's FID Inception
DIGITS_CNN = "ied-digits-cnn"  # the pipeline's own digits evaluator (ied.metrics)


@dataclass(frozen=True)
class Dataset:
    """What the pipeline needs to know of a dataset: splits, FID reference, classes, default extractor."""

    splits: tuple[str, ...]  # () for a dataset known only by its reference statistics
    reference_split: str | None
    num_classes: int
    extractor: str
    embedded: bool
    paper_style: str  # whose tables and figure numbers a run writes (ied.layout.PAPER_NUMBERS)
    shape: tuple[int, int, int]  # channels, height, width
    sizes: Mapping[str, int]  # images per split (upstream)


DATASETS = {
    "digits": Dataset(("train", "test"), "test", 10, DIGITS_CNN, embedded=True, paper_style="cifar10",
                      shape=(1, 8, 8), sizes={"train": 1437, "test": 360}),
    "cifar10": Dataset(("train", "test"), "test", 10, INCEPTION, embedded=False, paper_style="cifar10",
                       shape=(3, 32, 32), sizes={"train": 50_000, "test": 10_000}),
    "imagenet32": Dataset(("train", "val"), "val", 1000, INCEPTION, embedded=False, paper_style="imagenet32",
                          shape=(3, 32, 32), sizes={"train": 1_281_167, "val": 50_000}),
    # EDM's 64×64 datasets, for their published networks: scored against NVlabs' reference statistics
    # (evaluate.reference_statistics), nothing prepared, nothing trained
    "ffhq64": Dataset((), None, 0, INCEPTION, embedded=False, paper_style="cifar10", shape=(3, 64, 64), sizes={}),
    "afhqv2_64": Dataset((), None, 0, INCEPTION, embedded=False, paper_style="cifar10", shape=(3, 64, 64), sizes={}),
    "imagenet64": Dataset((), None, 1000, INCEPTION, embedded=False, paper_style="cifar10", shape=(3, 64, 64),
                          sizes={}),
}
EXTRACTORS = (INCEPTION, DIGITS_CNN)
FID_FEATURES = {INCEPTION: 2048, DIGITS_CNN: 128}  # the dimension of each extractor's FID features


class DataError(RuntimeError):
    """Missing, corrupt or malformed dataset files; the message names the path."""


class CorruptDataError(CorruptFileError, DataError):
    """A prepared .npz (dataset split, sample shard or samples file) that is truncated or fails its checksum."""


@dataclass
class ImageSet:
    """Images (uint8, N×C×H×W) with integer labels."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int

    def __len__(self) -> int:
        return len(self.images)


def checksum(images: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 over shapes and bytes of images and labels."""
    digest = hashlib.sha256()
    for array in (images, labels):
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def save_imageset(path: str | Path, data: ImageSet, **meta) -> None:
    """Write an ImageSet atomically as .npz with its checksum."""
    info = {"num_classes": data.num_classes, "sha256": checksum(data.images, data.labels), **meta}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, images=data.images, labels=data.labels, meta=np.array(json.dumps(info)))


def load_imageset(path: str | Path) -> ImageSet:
    """Read a prepared .npz, verifying its checksum."""
    return load_imageset_meta(path)[0]


def load_imageset_meta(path: str | Path) -> tuple[ImageSet, dict]:
    """Read a prepared .npz, verifying its checksum; also return the metadata stored with it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prepared dataset not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            images, labels, info = npz["images"], npz["labels"], json.loads(str(npz["meta"]))
    except Exception as err:  # zip, key or JSON damage all mean the same thing to the user
        raise CorruptDataError(path, f"unreadable or truncated image file ({err})") from None
    if checksum(images, labels) != info.get("sha256"):
        raise CorruptDataError(path, "checksum mismatch; the file is corrupt")
    return ImageSet(images, labels.astype(np.int64), int(info["num_classes"])), info


MAX_FEATURES = 8192  # feature dimensions of reference statistics read for no named extractor
PSD_TOLERANCE = 1e-6  # sigma's smallest eigenvalue may be this far below 0, relative to its largest variance


def _statistics_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The shape and dtype of mu and sigma from their .npy headers, before any value is read."""
    out = {}
    with zipfile.ZipFile(path) as archive:
        for key in ("mu", "sigma"):
            with archive.open(f"{key}.npy") as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
                out[key] = (shape, dtype)
    return out


def _check_covariance(path: Path, sigma: np.ndarray) -> None:
    """sigma is a covariance: symmetric, and positive semi-definite within PSD_TOLERANCE (checked by a Cholesky
    factorisation of sigma + tolerance · I), not all zero."""
    variances = np.diag(sigma)
    scale = float(np.abs(sigma).max()) if sigma.size else 0.0
    if scale == 0.0:
        raise DataError(f"{path}: sigma is all zero, not the covariance of features")
    if np.abs(sigma - sigma.T).max() > PSD_TOLERANCE * scale:
        raise DataError(f"{path}: sigma is not symmetric "
                        f"(max |sigma - sigmaᵀ| = {np.abs(sigma - sigma.T).max():.3g})")
    tolerance = PSD_TOLERANCE * float(variances.max())
    try:
        if variances.min() < -tolerance:
            raise np.linalg.LinAlgError
        np.linalg.cholesky(sigma + tolerance * np.eye(len(sigma)))
    except np.linalg.LinAlgError:
        raise DataError(f"{path}: sigma is not positive semi-definite (an eigenvalue below -{PSD_TOLERANCE:g} × its "
                        f"largest variance): not the covariance of features") from None


def read_fid_statistics(path: str | Path, dims: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`mu` and `sigma` of reference features from an .npz (NVlabs' fid-refs format), as float64; no pickle is read.

    DataError names the file if a key is missing; the shapes (read from the headers first, before any value) are
    not d and d × d (d = `dims` if given, else at most MAX_FEATURES) or their dtypes not real numbers; a value is
    not finite; or sigma is not a covariance (symmetric, positive semi-definite, not zero)."""
    path = Path(path)
    try:
        headers = _statistics_headers(path)
    except Exception as err:  # a missing key, a truncated zip, not a zip
        raise DataError(f"{path}: not reference statistics (an .npz with arrays mu and sigma): "
                        f"{type(err).__name__}: {str(err)[:200]}") from None
    (mu_shape, mu_dtype), (sigma_shape, sigma_dtype) = headers["mu"], headers["sigma"]
    d = mu_shape[0] if len(mu_shape) == 1 else -1
    if len(mu_shape) != 1 or sigma_shape != (d, d) or d != (dims or d) or not 1 < d <= (dims or MAX_FEATURES):
        raise DataError(f"{path}: mu {mu_shape} and sigma {sigma_shape} are not the statistics of "
                        f"{dims or 'd'}-dimensional features")
    if mu_dtype.kind not in "fiu" or sigma_dtype.kind not in "fiu":
        raise DataError(f"{path}: mu ({mu_dtype}) and sigma ({sigma_dtype}) must be real numbers")
    try:
        with np.load(path, allow_pickle=False) as npz:
            mu, sigma = np.asarray(npz["mu"], np.float64), np.asarray(npz["sigma"], np.float64)
    except Exception as err:  # a damaged member
        raise DataError(f"{path}: not reference statistics: {type(err).__name__}: {str(err)[:200]}") from None
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise DataError(f"{path}: mu or sigma holds non-finite values")
    _check_covariance(path, sigma)
    return mu, sigma


def generation_info(path: str | Path) -> dict:
    """The generation metadata (checkpoint, spec, seed set) stored with a samples file by ied.generate."""
    return json.loads(load_imageset_meta(path)[1].get("generation", "{}"))


def load_digits(split: str, seed: int = 0, test_fraction: float = 0.2) -> ImageSet:
    """scikit-learn's bundled 8×8 handwritten digits (no download), a fixed seeded stratified split."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    idx_train, idx_test = train_test_split(np.arange(len(images)), test_size=test_fraction, random_state=seed,
                                           stratify=bunch.target)
    idx = {"train": idx_train, "test": idx_test}[split]
    return ImageSet(images[idx], bunch.target[idx].astype(np.int64), 10)


CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
IMAGENET32_FILES = {"train": [f"train_data_batch_{i}.npz" for i in range(1, 11)], "val": ["val_data.npz"]}


def _cifar_md5s() -> dict[str, str]:
    from torchvision.datasets import CIFAR10
    return dict(CIFAR10.train_list + CIFAR10.test_list)


class _CifarUnpickler(pickle.Unpickler):
    """A CIFAR-10 python batch holds a dict of bytes, lists, ints and one uint8 array: only numpy's array
    reconstruction is allowed, so a batch file can never run code (it is read before its md5 is checked)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise DataError(f"{self.path}: refused to unpickle {module}.{name}; a CIFAR-10 batch holds only arrays, "
                            f"lists and numbers")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, verify: bool) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch as images N×3×32×32 uint8 and labels; md5 as torchvision when `verify`."""
    if not path.is_file():
        raise DataError(f"{path}: CIFAR-10 batch not found (set data_root, or download: true with internet)")
    if verify:
        from torchvision.datasets.utils import check_integrity
        if not check_integrity(str(path), _cifar_md5s()[path.name]):
            raise DataError(f"{path}: md5 differs from torchvision's; the file is corrupt or not CIFAR-10")
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, path).load()
        data, labels = np.asarray(entry["data"]), np.asarray(entry["labels"], dtype=np.int64)
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{path}: not a CIFAR-10 python batch ({err})") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"{path}: expected uint8 data N×3072 and N labels, got {data.dtype} {data.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(root: str | Path, split: str, download: bool = False, verify: bool = True) -> ImageSet:
    """CIFAR-10 from torchvision's python-pickle batches under `root`; md5s checked as torchvision does."""
    root = Path(root)
    if download:
        from torchvision.datasets import CIFAR10
        CIFAR10(str(root), train=(split == "train"), download=True)  # verifies the archive's md5
    batches = [_read_cifar_batch(root / CIFAR_FOLDER / name, verify) for name in CIFAR_FILES[split]]
    return ImageSet(np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]), 10)


def _npy_header(archive: zipfile.ZipFile, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of one array of an .npz, read from its header without loading the data."""
    with archive.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    return shape, dtype


def _check_imagenet32_batch(path: Path) -> None:
    """Keys, shapes and dtypes of one ImageNet-32 batch, from the .npz headers (cheap on 1.2M images)."""
    if not path.is_file():
        raise DataError(f"{path}: ImageNet-32 batch not found (set data_root)")
    try:
        with zipfile.ZipFile(path) as archive:
            (shape, dtype), (lshape, _) = _npy_header(archive, "data"), _npy_header(archive, "labels")
    except Exception as err:
        raise DataError(f"{path}: not an ImageNet-32 npz batch with keys data, labels ({err})") from None
    if dtype != np.uint8:
        raise DataError(f"{path}: data is {dtype}, expected uint8 (the pipeline does not cast images)")
    if len(shape) != 2 or shape[1] != 3 * 32 * 32 or lshape != (shape[0],):
        raise DataError(f"{path}: expected data N×3072 and N labels, got {shape} and {lshape}")


def load_imagenet32(root: str | Path, split: str) -> ImageSet:
    """Downsampled ImageNet 32×32 (Chrabaszcz et al. 2017) npz batches; labels are 1-based upstream."""
    root = Path(root)
    images, labels = [], []
    for name in IMAGENET32_FILES[split]:
        path = root / name
        _check_imagenet32_batch(path)
        with np.load(path) as npz:
            data, y = npz["data"], np.asarray(npz["labels"], dtype=np.int64)
        if len(y) and (y.min() < 1 or y.max() > 1000):
            raise DataError(f"{path}: expected 1-based labels in 1..1000")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(y - 1)
    return ImageSet(np.concatenate(images), np.concatenate(labels), 1000)


def check_upstream(dataset: str, data_root: str | Path) -> None:
    """Every upstream file of every split is there with the right shape and type (before any job runs)."""
    root = Path(data_root)
    if dataset == "cifar10":
        for split in CIFAR_FILES:
            for name in CIFAR_FILES[split]:
                _read_cifar_batch(root / CIFAR_FOLDER / name, verify=False)  # md5s: in the prepare job
    elif dataset == "imagenet32":
        for split in IMAGENET32_FILES:
            for name in IMAGENET32_FILES[split]:
                _check_imagenet32_batch(root / name)


def prepare(dataset: str, split: str, out: str | Path, *, data_root: str | None = None, download: bool = False,
            verify: bool = True, max_images: int | None = None, seed: int = 0) -> ImageSet:
    """Load a dataset split from its upstream format and write the prepared .npz."""
    if dataset == "digits":
        data = load_digits(split, seed=seed)
    elif dataset in ("cifar10", "imagenet32"):
        if not data_root:
            raise DataError(f"dataset {dataset!r} needs data_root (a local folder with the upstream files)")
        data = load_cifar10(data_root, split, download, verify) if dataset == "cifar10" else \
            load_imagenet32(data_root, split)
    else:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}")
    if max_images is not None and max_images < len(data):
        keep = np.sort(np.random.default_rng(seed).permutation(len(data))[:max_images])
        data = ImageSet(data.images[keep], data.labels[keep], data.num_classes)
    save_imageset(out, data, dataset=dataset, split=split)
    return data


def to_model_range(images_uint8: "torch.Tensor") -> "torch.Tensor":
    """uint8 [0, 255] → float [−1, 1] (σ_data = 0.5 in EDM's preconditioning)."""
    return images_uint8.float() / 127.5 - 1.0


def to_uint8(x: "torch.Tensor") -> "torch.Tensor":
    """float [−1, 1] → uint8 [0, 255], as NVlabs/edm saves images."""
    return (x * 127.5 + 128).clamp(0, 255).byte()
