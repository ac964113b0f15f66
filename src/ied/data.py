"""Datasets in one prepared on-disk format: uint8 images N×C×H×W, int64 labels, and a checksum."""
from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ied.io import CorruptFileError, atomic_path

DATASETS = ("digits", "cifar10", "imagenet32")
REFERENCE_SPLIT = {"digits": "test", "cifar10": "test", "imagenet32": "val"}
NUM_CLASSES = {"digits": 10, "cifar10": 10, "imagenet32": 1000}


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
    return ImageSet(images, labels.astype(np.int64), int(info["num_classes"]))


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


def load_cifar10(root: str | Path, split: str, download: bool = False, verify: bool = True) -> ImageSet:
    """CIFAR-10 from torchvision's python-pickle batches under `root`; md5s checked as torchvision does."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    root = Path(root)
    if download:
        CIFAR10(str(root), train=(split == "train"), download=True)  # verifies the archive's md5
    files = CIFAR10.train_list if split == "train" else CIFAR10.test_list
    images, labels = [], []
    for name, md5 in files:
        path = root / CIFAR10.base_folder / name
        if not path.is_file():
            raise DataError(f"{path}: CIFAR-10 batch not found (set data_root, or download: true with internet)")
        if verify and not check_integrity(str(path), md5):
            raise DataError(f"{path}: md5 differs from torchvision's; the file is corrupt or not CIFAR-10")
        try:
            with open(path, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(entry["labels"], dtype=np.int64))
        except Exception as err:
            raise DataError(f"{path}: not a CIFAR-10 python batch ({err})") from None
    return ImageSet(np.concatenate(images), np.concatenate(labels), 10)


def load_imagenet32(root: str | Path, split: str) -> ImageSet:
    """Downsampled ImageNet 32×32 (Chrabaszcz et al. 2017) npz batches; labels are 1-based upstream."""
    root = Path(root)
    names = [f"train_data_batch_{i}.npz" for i in range(1, 11)] if split == "train" else ["val_data.npz"]
    images, labels = [], []
    for name in names:
        path = root / name
        if not path.is_file():
            raise DataError(f"{path}: ImageNet-32 batch not found (set data_root)")
        try:
            with np.load(path) as npz:
                data, y = np.asarray(npz["data"], dtype=np.uint8), np.asarray(npz["labels"], dtype=np.int64)
        except Exception as err:
            raise DataError(f"{path}: not an ImageNet-32 npz batch with keys data, labels ({err})") from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(y) != len(data) or y.min() < 1 or y.max() > 1000:
            raise DataError(f"{path}: expected data N×3072 and 1-based labels in 1..1000")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(y - 1)
    return ImageSet(np.concatenate(images), np.concatenate(labels), 1000)


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
        raise DataError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")
    if max_images is not None and max_images < len(data):
        keep = np.sort(np.random.default_rng(seed).permutation(len(data))[:max_images])
        data = ImageSet(data.images[keep], data.labels[keep], data.num_classes)
    save_imageset(out, data, dataset=dataset, split=split)
    return data


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float [−1, 1] (σ_data = 0.5 in EDM's preconditioning)."""
    return images_uint8.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [−1, 1] → uint8 [0, 255], as NVlabs/edm saves images."""
    return (x * 127.5 + 128).clamp(0, 255).to(torch.uint8)
