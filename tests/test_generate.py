import json
import multiprocessing as mp
import os
import signal
import time

import numpy as np
import pytest
import torch

from ied.data import load_imageset
from ied.generate import StackedRandomGenerator, balanced_labels, generate, generation_info
from ied.train import train

from conftest import tiny_config

VE = {"family": "ve", "sigma_min": 0.002, "sigma_max": 80}


@pytest.fixture(scope="module")
def checkpoint(digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "ckpt-20.pt"
    train(tiny_config(), 0, 20, data_path=digits / "train.npz", checkpoint_in=None, checkpoint_out=path)
    return path


@pytest.mark.parametrize("sampler, steps", [("euler_maruyama", 6), ("heun", 4), ("edm_stochastic", 4)])
def test_images_do_not_depend_on_batch_or_shard_size(checkpoint, tmp_path, sampler, steps):
    options = {"S_churn": 10} if sampler == "edm_stochastic" else {}
    a = generate(checkpoint, VE, sampler, steps, tmp_path / "a.npz", n_samples=10, batch_size=10, shard_size=10,
                 options=options)
    b = generate(checkpoint, VE, sampler, steps, tmp_path / "b.npz", n_samples=10, batch_size=3, shard_size=4,
                 options=options)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    c = generate(checkpoint, VE, sampler, steps, tmp_path / "c.npz", n_samples=10, seed_set=1, options=options)
    assert not np.array_equal(a.images, c.images)
    info = generation_info(tmp_path / "a.npz")
    assert info["sampler"] == sampler and info["checkpoint_step"] == 20 and info["seed_set"] == 0
    assert not (tmp_path / "a.npz.parts").exists()


def test_balanced_labels_and_stacked_generator():
    labels = balanced_labels(100, 10, 0)
    assert np.bincount(labels).tolist() == [10] * 10 and not np.array_equal(labels, np.arange(100) % 10)
    whole = StackedRandomGenerator("cpu", [5, 6, 7]).randn((3, 2, 2))
    part = StackedRandomGenerator("cpu", [6]).randn((1, 2, 2))
    assert torch.equal(whole[1], part[0])


def _generate_slowly(checkpoint, out):
    torch.set_num_threads(1)
    generate(checkpoint, VE, "euler_maruyama", 40, out, n_samples=12, batch_size=2, shard_size=2)


def test_killed_generation_resumes_from_finished_shards(checkpoint, tmp_path):
    out = tmp_path / "s.npz"
    reference = generate(checkpoint, VE, "euler_maruyama", 40, tmp_path / "ref.npz", n_samples=12,
                         batch_size=12, shard_size=12)
    proc = mp.get_context("spawn").Process(target=_generate_slowly, args=(checkpoint, out))
    proc.start()
    parts = tmp_path / "s.npz.parts"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("shard-*.npz"))) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    finished = sorted(parts.glob("shard-*.npz"))
    assert 2 <= len(finished) < 6 and not out.exists()
    (parts / "shard-00005-10-12.npz").write_bytes(b"truncated")  # a half-written shard is redone
    resumed = generate(checkpoint, VE, "euler_maruyama", 40, out, n_samples=12, batch_size=2, shard_size=2,
                       log_path=tmp_path / "log.jsonl")
    assert np.array_equal(resumed.images, reference.images)
    redone = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])["images"]
    assert redone == 12 - 2 * len(finished)  # finished shards were reused, not regenerated
    assert not parts.exists()  # parts are cleaned up after the merge
    assert load_imageset(out).images.shape == (12, 1, 8, 8)


def test_grid_png(checkpoint, tmp_path):
    from PIL import Image
    generate(checkpoint, VE, "heun", 3, tmp_path / "g.npz", n_samples=100, batch_size=100,
             grid=tmp_path / "g.png")
    image = Image.open(tmp_path / "g.png")
    assert image.size == (4 * (10 * 9 + 1),) * 2
