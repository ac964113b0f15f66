import json
import multiprocessing as mp
import os
import signal
import time

import numpy as np
import pytest
import torch

from ied.checkpoints import CheckpointError
from ied.data import generation_info, load_imageset
from ied.generate import balanced_labels, generate
from ied.train import train

from conftest import sampling_spec, tiny_spec

EM40 = sampling_spec(steps=40)


@pytest.fixture(scope="module")
def checkpoint(digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "ckpt-20.pt"
    train(tiny_spec(), 0, 20, data_path=digits / "train.npz", checkpoint_in=None, checkpoint_out=path)
    return path


@pytest.mark.parametrize("sampler, steps, options", [("euler_maruyama", 6, {}), ("heun", 4, {}),
                                                     ("edm_stochastic", 4, {"S_churn": 10})])
def test_images_do_not_depend_on_batch_or_shard_size(checkpoint, tmp_path, sampler, steps, options):
    spec = sampling_spec(sampler=sampler, steps=steps, **options)
    runs = {(batch, shard): generate(checkpoint, spec, tmp_path / f"{batch}-{shard}.npz", n_samples=70,
                                     batch_size=batch, shard_size=shard)
            for batch, shard in [(70, 70), (1, 70), (7, 64), (64, 7)]}
    first = runs[(70, 70)]
    for other in runs.values():
        assert np.array_equal(first.images, other.images) and np.array_equal(first.labels, other.labels)
    c = generate(checkpoint, spec, tmp_path / "c.npz", n_samples=70, seed_set=1)
    assert not np.array_equal(first.images, c.images)
    info = generation_info(tmp_path / "70-70.npz")
    assert info["sampler"] == sampler and info["checkpoint_step"] == 20 and info["seed_set"] == 0
    assert not (tmp_path / "70-70.npz.parts").exists()


def test_balanced_labels():
    labels = balanced_labels(100, 10, 0)
    assert np.bincount(labels).tolist() == [10] * 10 and not np.array_equal(labels, np.arange(100) % 10)


def test_refuses_a_checkpoint_of_another_step_or_spec(checkpoint, tmp_path):
    copied = tmp_path / "ckpt-10.pt"
    copied.write_bytes(checkpoint.read_bytes())  # a later checkpoint copied over an earlier one
    with pytest.raises(CheckpointError, match="ckpt-10.pt: holds step 20, expected 10"):
        generate(copied, EM40, tmp_path / "s.npz", n_samples=4, expect_step=10)
    with pytest.raises(CheckpointError, match="ckpt-10.pt: written by a different training config"):
        generate(copied, EM40, tmp_path / "s.npz", n_samples=4, expect_step=20, expect_config_hash="0" * 16)
    assert not (tmp_path / "s.npz").exists()


def _generate_slowly(checkpoint, out, spec):
    torch.set_num_threads(1)
    generate(checkpoint, spec, out, n_samples=12, batch_size=2, shard_size=2)


def kill_after_two_shards(checkpoint, out, spec):
    """Generate 12 images in shards of 2 in a child process, SIGKILL it once two shards are done; the parts folder."""
    proc = mp.get_context("spawn").Process(target=_generate_slowly, args=(checkpoint, out, spec))
    proc.start()
    parts = out.with_name(out.name + ".parts")
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("shard-*.npz"))) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    return parts


def test_killed_generation_resumes_from_finished_shards(checkpoint, tmp_path):
    out = tmp_path / "s.npz"
    reference = generate(checkpoint, EM40, tmp_path / "ref.npz", n_samples=12, batch_size=12, shard_size=12)
    parts = kill_after_two_shards(checkpoint, out, EM40)
    finished = sorted(parts.glob("shard-*.npz"))
    assert 2 <= len(finished) < 6 and not out.exists()
    (parts / "shard-10-12.npz").write_bytes(b"truncated")  # a half-written shard is redone
    resumed = generate(checkpoint, EM40, out, n_samples=12, batch_size=2, shard_size=2,
                       log_path=tmp_path / "log.jsonl")
    assert np.array_equal(resumed.images, reference.images)
    redone = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])["images"]
    assert redone == 12 - 2 * len(finished)  # finished shards were reused, not regenerated
    assert not parts.exists()  # parts are cleaned up after the merge
    assert load_imageset(out).images.shape == (12, 1, 8, 8)


def test_grid_png(checkpoint, tmp_path):
    from PIL import Image
    generate(checkpoint, sampling_spec(sampler="heun", steps=3), tmp_path / "g.npz", n_samples=100, batch_size=100,
             grid=tmp_path / "g.png")
    image = Image.open(tmp_path / "g.png")
    assert image.size == (4 * (10 * 9 + 1),) * 2


def test_shards_of_another_spec_are_not_reused(checkpoint, tmp_path):
    """A kill, then a config edit (steps 40 → 30): the 40-step shards are regenerated, never mixed in."""
    out = tmp_path / "s.npz"
    parts = kill_after_two_shards(checkpoint, out, EM40)
    assert len(list(parts.glob("shard-*.npz"))) >= 2
    em30 = sampling_spec(steps=30)
    reference = generate(checkpoint, em30, tmp_path / "ref.npz", n_samples=12)
    resumed = generate(checkpoint, em30, out, n_samples=12, batch_size=2, shard_size=2, log_path=tmp_path / "log.jsonl")
    assert np.array_equal(resumed.images, reference.images)
    assert json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])["images"] == 12


def test_non_finite_samples_are_never_written(checkpoint, tmp_path):
    from ied.generate import GenerationError
    huge = sampling_spec(rationale={"family": "ve", "sigma_min": 0.002, "sigma_max": 1e30}, steps=3)
    with pytest.raises(GenerationError, match="s.npz: the sampler produced non-finite values"):
        generate(checkpoint, huge, tmp_path / "s.npz", n_samples=4)
    assert not (tmp_path / "s.npz").exists() and not list((tmp_path / "s.npz.parts").glob("*.npz"))


def test_out_of_memory_halves_the_batch_and_keeps_the_images(checkpoint, tmp_path, monkeypatch):
    """The largest batch that fits: a CUDA out-of-memory error halves the batch; the images stay the same."""
    import ied.generate as gen
    reference = generate(checkpoint, EM40, tmp_path / "ref.npz", n_samples=20, batch_size=20)
    sampled = []

    def small_memory(sample, start, stop, batch_size):
        def limited(idx):
            if len(idx) > 4:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            sampled.append(len(idx))
            return sample(idx)
        return original(limited, start, stop, batch_size)

    original = gen._in_batches
    monkeypatch.setattr(gen, "_in_batches", small_memory)
    out = generate(checkpoint, EM40, tmp_path / "s.npz", n_samples=20, batch_size=20)
    assert sampled == [2] * 10  # 20 → 10 → 5 → 2 images per batch, then all the rest at 2
    assert np.array_equal(out.images, reference.images)
