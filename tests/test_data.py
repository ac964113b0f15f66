import pickle

import numpy as np
import pytest

from ied.data import DataError, ImageSet, load_imageset, prepare, save_imageset


def test_digits_split_is_fixed_and_disjoint(tmp_path):
    train = prepare("digits", "train", tmp_path / "train.npz")
    test = prepare("digits", "test", tmp_path / "test.npz")
    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == np.uint8
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert set(np.unique(test.labels)) == set(range(10))
    again = load_imageset(tmp_path / "test.npz")
    assert np.array_equal(again.images, test.images) and np.array_equal(again.labels, test.labels)
    assert train.images.max() == 255
    flat = lambda d: {x.tobytes() for x in d.images}
    assert len(flat(train) & flat(test)) < 5  # a few digits are pixel-identical duplicates in sklearn's set


def test_corrupt_and_truncated_files_are_named(tmp_path):
    path = tmp_path / "set.npz"
    save_imageset(path, ImageSet(np.zeros((4, 1, 8, 8), np.uint8), np.arange(4), 10))
    raw = bytearray(path.read_bytes())
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=str(path)):
        load_imageset(path)
    # same length, changed image bytes: the zip is fine, the checksum is not
    data = ImageSet(np.zeros((4, 1, 8, 8), np.uint8), np.arange(4), 10)
    save_imageset(path, data)
    with np.load(path) as npz:
        arrays = dict(npz)
    arrays["images"][0, 0, 0, 0] = 7
    np.savez(path, **arrays)
    with pytest.raises(DataError, match="checksum mismatch"):
        load_imageset(path)
    with pytest.raises(DataError, match="not found"):
        load_imageset(tmp_path / "missing.npz")


def write_fake_cifar(root, n_per_batch=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        entry = {"batch_label": name, "labels": rng.integers(0, 10, n_per_batch).tolist(),
                 "data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 "filenames": [f"{i}.png" for i in range(n_per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    return folder


def test_cifar10_upstream_format(tmp_path):
    folder = write_fake_cifar(tmp_path)
    train = prepare("cifar10", "train", tmp_path / "train.npz", data_root=str(tmp_path), verify=False)
    test = prepare("cifar10", "test", tmp_path / "test.npz", data_root=str(tmp_path), verify=False)
    assert train.images.shape == (30, 3, 32, 32) and test.images.shape == (6, 3, 32, 32)
    with open(folder / "test_batch", "rb") as f:
        raw = pickle.load(f)
    assert np.array_equal(test.images[2, 1].ravel(), raw["data"][2, 1024:2048])  # CHW planes, as upstream
    # torchvision's md5 list rejects these files, naming them
    with pytest.raises(DataError, match="data_batch_1: md5 differs"):
        prepare("cifar10", "train", tmp_path / "x.npz", data_root=str(tmp_path))
    (folder / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch: CIFAR-10 batch not found"):
        prepare("cifar10", "test", tmp_path / "x.npz", data_root=str(tmp_path), verify=False)
    with pytest.raises(DataError, match="needs data_root"):
        prepare("cifar10", "test", tmp_path / "x.npz")


def write_fake_imagenet32(root, n_per_batch=3):
    """Downsampled ImageNet 32×32 batches in the upstream npz format (data N×3072 uint8, 1-based labels)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"train_data_batch_{i}" for i in range(1, 11)] + ["val_data"]:
        np.savez(root / f"{name}.npz", data=rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 labels=rng.integers(1, 1001, n_per_batch), mean=np.zeros(3072))
    return root


def test_imagenet32_upstream_format(tmp_path):
    write_fake_imagenet32(tmp_path)
    val = prepare("imagenet32", "val", tmp_path / "val.npz", data_root=str(tmp_path))
    with np.load(tmp_path / "val_data.npz") as raw:
        assert np.array_equal(val.labels, raw["labels"] - 1)
        assert np.array_equal(val.images.reshape(3, -1), raw["data"])
    assert len(prepare("imagenet32", "train", tmp_path / "t.npz", data_root=str(tmp_path))) == 30
    assert val.num_classes == 1000
    np.savez(tmp_path / "val_data.npz", data=np.zeros((2, 100), np.uint8), labels=np.ones(2))
    with pytest.raises(DataError, match="val_data.npz: expected data N×3072"):
        prepare("imagenet32", "val", tmp_path / "val.npz", data_root=str(tmp_path))
    np.savez(tmp_path / "val_data.npz", data=np.zeros((2, 3072), np.float32), labels=np.ones(2))
    with pytest.raises(DataError, match="val_data.npz: data is float32, expected uint8"):
        prepare("imagenet32", "val", tmp_path / "val.npz", data_root=str(tmp_path))


def test_max_images_subset(tmp_path):
    sub = prepare("digits", "train", tmp_path / "s.npz", max_images=100)
    assert len(sub) == 100 and len(load_imageset(tmp_path / "s.npz")) == 100


def test_a_cifar_batch_that_would_run_code_is_refused_before_its_md5(tmp_path):
    """The config check opens every batch (shapes, dtypes) on the login node, before the prepare job checks md5s:
    a batch whose pickle calls os.system is refused by the allow-list unpickler, and nothing runs."""
    import os

    from ied.data import check_upstream

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'ran'}",)

    folder = write_fake_cifar(tmp_path)
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({"data": Payload(), "labels": []}, f)
    with pytest.raises(DataError, match=r"data_batch_3: refused to unpickle (posix|os)\.system"):
        check_upstream("cifar10", tmp_path)
    with pytest.raises(DataError, match="refused to unpickle"):
        prepare("cifar10", "train", tmp_path / "train.npz", data_root=str(tmp_path), verify=False)
    assert not (tmp_path / "ran").exists() and not (tmp_path / "train.npz").exists()
