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
from ied.generate import generate
from ied.noise import balanced_labels
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


@pytest.mark.slow  # a child process killed mid-run: fault injection, in CI but not in the mutation runs
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


@pytest.mark.slow
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


def test_grid_layout_pixel_by_pixel(tmp_path):
    """rows × rows cells of pad grey pixels around each image, upscaled ×4 (nearest) below 32 pixels."""
    from PIL import Image

    from ied.generate import save_grid
    images = np.arange(4 * 2 * 2, dtype=np.uint8).reshape(4, 1, 2, 2) * 10
    save_grid(tmp_path / "g.png", images, rows=2, pad=1)
    grid = np.asarray(Image.open(tmp_path / "g.png"))
    assert Image.open(tmp_path / "g.png").mode == "L" and grid.shape == (4 * 7, 4 * 7)
    small = grid[::4, ::4]  # undo the nearest-neighbour upscaling
    expected = np.full((7, 7), 96, dtype=np.uint8)
    for i, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        expected[1 + 3 * r:3 + 3 * r, 1 + 3 * c:3 + 3 * c] = images[i, 0]
    np.testing.assert_array_equal(small, expected)
    assert (grid[0:4, 0:4] == 96).all()  # each upscaled pixel is a 4 × 4 block
    rgb = np.stack([images[:, 0]] * 3, axis=1)
    save_grid(tmp_path / "c.png", np.repeat(rgb, 16, axis=2).repeat(16, axis=3), rows=2)  # 32 × 32: not upscaled
    assert Image.open(tmp_path / "c.png").mode == "RGB" and Image.open(tmp_path / "c.png").size == (2 * 33 + 1,) * 2


def test_a_shard_is_reused_only_with_its_own_key(tmp_path):
    from ied.data import ImageSet, save_imageset
    from ied.generate import _reusable
    path = tmp_path / "shard-0-2.npz"
    shard = ImageSet(np.zeros((2, 1, 8, 8), np.uint8), np.arange(2), 10)
    assert not _reusable(path, "k")  # not there
    save_imageset(path, shard, shard="k")
    assert _reusable(path, "k") and path.exists()
    assert not _reusable(path, "other") and not path.exists()  # another checkpoint, spec or seed set: deleted
    save_imageset(path, shard, shard="k")
    path.write_bytes(path.read_bytes()[:100])
    assert not _reusable(path, "k") and not path.exists()  # truncated: deleted


def test_image_i_of_seed_set_k_has_the_noise_key_k_times_ten_million_plus_i(checkpoint, tmp_path):
    """The seeding contract, from its definition: Euler is deterministic, so an image is its latent's ODE solution."""
    from ied.checkpoints import load_ema_denoiser
    from ied.data import to_uint8
    from ied.noise import PerImageNoise
    from ied.samplers import euler
    from ied.specs import rationale
    spec = sampling_spec(sampler="euler", steps=3)
    images = generate(checkpoint, spec, tmp_path / "s.npz", n_samples=3, seed_set=2).images
    denoiser, _ = load_ema_denoiser(checkpoint)
    latents = PerImageNoise([20_000_000, 20_000_001, 20_000_002]).randn((3, 1, 8, 8))
    labels = torch.as_tensor(balanced_labels(3, 10, 2))
    with torch.no_grad():
        x = euler(denoiser, latents, rationale(spec["rationale"]), 3, class_labels=labels)
    np.testing.assert_array_equal(images, to_uint8(x.float()).numpy())


def test_the_generation_log_and_metadata(checkpoint, tmp_path):
    spec = sampling_spec(steps=3)
    generate(checkpoint, spec, tmp_path / "s.npz", n_samples=4, seed_set=1, log_path=tmp_path / "log.jsonl")
    line = json.loads((tmp_path / "log.jsonl").read_text())
    assert line["event"] == "generated" and line["images"] == 4 and line["device"] == "cpu" and line["nfe"] == 3
    assert line["images_per_s"] == pytest.approx(4 / line["seconds"])
    info = generation_info(tmp_path / "s.npz")
    state = torch.load(checkpoint, weights_only=True)
    assert info["checkpoint_sha256"] == state["sha256"] and info["config_hash"] == state["config_hash"]
    assert info["sample_rationale_spec"] == spec["rationale"] and info["options"] == spec["options"]
    assert (info["seed_set"], info["n_samples"], info["steps"]) == (1, 4, 3)


def test_batches_halve_down_to_one_and_no_further(capsys):
    import ied.generate as gen
    sizes = []

    def sample(idx):
        sizes.append(len(idx))
        if len(idx) > 3:
            raise torch.cuda.OutOfMemoryError("simulated")
        return np.zeros((len(idx), 1))

    images, batch = gen._in_batches(sample, 0, 10, 9)
    assert batch == 2 and sum(len(b) for b in images) == 10 and sizes == [9, 4, 2, 2, 2, 2, 2]
    assert [json.loads(line) for line in capsys.readouterr().err.splitlines()] == [
        {"event": "out of memory", "batch_size": 4}, {"event": "out of memory", "batch_size": 2}]

    def only_one(idx):
        sizes.append(len(idx))
        if len(idx) > 1:
            raise torch.cuda.OutOfMemoryError("simulated")
        return np.zeros((1, 1))

    sizes.clear()
    images, batch = gen._in_batches(only_one, 0, 3, 2)  # from 2 it halves to 1 and goes on
    assert batch == 1 and len(images) == 3 and sizes == [2, 1, 1, 1]

    def never(idx):
        raise torch.cuda.OutOfMemoryError("simulated")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        gen._in_batches(never, 0, 4, 4)


def test_finished_shards_are_reused_only_for_the_same_spec_and_seed_set(checkpoint, tmp_path, monkeypatch, capsys):
    """A run that dies after its shards are written leaves <out>.parts/; the next run of the same job reuses
    every shard, a run of another spec or seed set regenerates them all (fast: no child process is killed)."""
    import ied.generate as gen
    out = tmp_path / "s.npz"
    spec = sampling_spec(steps=3)

    def leave_shards(spec, seed_set):
        def dies(*args, **kwargs):
            raise RuntimeError("killed before the parts are removed")
        with monkeypatch.context() as m:
            m.setattr(gen, "save_grid", dies)
            with pytest.raises(RuntimeError, match="killed"):
                generate(checkpoint, spec, out, n_samples=6, seed_set=seed_set, shard_size=2, batch_size=2,
                         grid=tmp_path / "g.png")
        assert sorted(p.name for p in out.with_name("s.npz.parts").iterdir()) == [
            "shard-0-2.npz", "shard-2-4.npz", "shard-4-6.npz"]
        return load_imageset(out).images

    def images_generated(spec, seed_set):
        capsys.readouterr()
        data = generate(checkpoint, spec, out, n_samples=6, seed_set=seed_set, shard_size=2, batch_size=2)
        assert not out.with_name("s.npz.parts").exists()
        return json.loads(capsys.readouterr().err.splitlines()[-1])["images"], data.images

    first = leave_shards(spec, 0)
    done, again = images_generated(spec, 0)
    assert done == 0 and np.array_equal(again, first)  # every shard reused, in order
    leave_shards(spec, 0)
    done, other_seeds = images_generated(spec, 1)
    assert done == 6 and not np.array_equal(other_seeds, first)
    leave_shards(spec, 0)
    done, other_spec = images_generated(sampling_spec(steps=4), 0)
    assert done == 6 and not np.array_equal(other_spec, first)


def test_shards_of_a_retrained_checkpoint_at_the_same_path_are_not_reused(checkpoint, digits, tmp_path, monkeypatch,
                                                                          capsys):
    """Shards are keyed by the checkpoint's content, not its path: a checkpoint retrained under the same name makes
    every shard again, and the images are those of the new checkpoint."""
    import shutil

    import ied.generate as gen
    spec = sampling_spec({"family": "ve", "sigma_min": 0.002, "sigma_max": 2.0}, "heun", 4)  # images far from 0/255
    ckpt, out = tmp_path / "ckpt-20.pt", tmp_path / "s.npz"
    shutil.copy(checkpoint, ckpt)
    with monkeypatch.context() as m:
        m.setattr(gen, "save_grid", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
        with pytest.raises(RuntimeError, match="killed"):
            generate(ckpt, spec, out, n_samples=6, shard_size=2, batch_size=2, grid=tmp_path / "g.png")
    assert len(list(out.with_name("s.npz.parts").iterdir())) == 3
    train(tiny_spec(seed=1), 0, 20, data_path=digits / "train.npz", checkpoint_in=None, checkpoint_out=ckpt)
    capsys.readouterr()
    retrained = generate(ckpt, spec, out, n_samples=6, shard_size=2, batch_size=2).images
    assert json.loads(capsys.readouterr().err.splitlines()[-1])["images"] == 6  # none of the old shards reused
    fresh = generate(ckpt, spec, tmp_path / "fresh.npz", n_samples=6, shard_size=6, batch_size=6).images
    assert np.array_equal(retrained, fresh)
    assert not np.array_equal(retrained, generate(checkpoint, spec, tmp_path / "old.npz", n_samples=6).images)
