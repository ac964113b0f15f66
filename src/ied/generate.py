"""Generate images from a checkpoint's EMA denoiser: per-image noise, resumable shards, sample grids."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ied import device as devices
from ied.checkpoints import load_ema_denoiser
from ied.data import DataError, ImageSet, load_imageset, load_imageset_meta, save_imageset, to_uint8
from ied.io import atomic_path
from ied.noise import SEED_SET_STRIDE, PerImageNoise, balanced_labels
from ied.rationales import Rationale
from ied.samplers import SAMPLERS, identity_options, nfe, resolve_options
from ied.specs import identity_hash, sampling_rationale



def save_grid(path: str | Path, images: np.ndarray, rows: int = 10, pad: int = 1) -> None:
    """A rows×rows PNG of the first rows² images (Figures 8–9), cells separated by `pad` grey pixels."""
    from PIL import Image

    n = min(len(images), rows * rows)
    c, h, w = images.shape[1:]
    grid = np.full((rows * (h + pad) + pad, rows * (w + pad) + pad, c), 96, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, rows)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y:y + h, x:x + w] = images[i].transpose(1, 2, 0)
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    if h < 32:  # tiny digits: upscale so the grid is legible
        img = img.resize((img.width * 4, img.height * 4), Image.NEAREST)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


class GenerationError(RuntimeError):
    """Samples that must not be written (non-finite values); the message names the output."""


def generate(checkpoint: str | Path, spec: Mapping[str, Any], out: str | Path, *, n_samples: int, seed_set: int = 0,
             expect_step: int | None = None, expect_config_hash: str | None = None, batch_size: int = 256,
             shard_size: int = 1000, grid: str | Path | None = None, device: str = "auto", precision: str = "auto",
             compile: bool = False, log_path: str | Path | None = None,
             rationale_table: str | Path | None = None) -> ImageSet:
    """Sample `n_samples` images of seed set `seed_set` with the resolved sampling spec (ied.specs.sampling_spec)
    into `out` (.npz). Finished shards in `out`.parts/ survive a kill and are reused only if they were made
    from the same checkpoint content, spec, seed set and (a fitted rationale) table content; batch and shard sizes
    do not change any image."""
    options = resolve_options(spec["sampler"], spec["options"])
    schedule, table_sha256 = sampling_rationale(spec["rationale"], rationale_table)
    dev = devices.choose(device)
    denoiser, ckpt = load_ema_denoiser(checkpoint, device=dev, step=expect_step, config_hash=expect_config_hash)
    net = devices.prepare_module(denoiser, dev, compile=compile)
    labels_all = balanced_labels(n_samples, ckpt["num_classes"], seed_set)
    sample = _sampler(net, dev, devices.autocast(dev, precision), ckpt, spec, schedule, options, labels_all, seed_set,
                      out)
    identity = {"checkpoint_sha256": ckpt["sha256"],
                "spec": {**dict(spec), "options": identity_options(spec["sampler"], spec["options"])},
                "seed_set": seed_set, "n_samples": n_samples, **table_sha256}
    parts = Path(str(out) + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    tick = time.perf_counter()
    shards, done_images = _shards(sample, parts, identity, labels_all, ckpt["num_classes"], shard_size, batch_size)
    elapsed = time.perf_counter() - tick
    data = ImageSet(np.concatenate([load_imageset(p).images for p in shards]), labels_all, ckpt["num_classes"])
    info = {"checkpoint_step": ckpt["step"], "checkpoint_sha256": ckpt["sha256"], "config_hash": ckpt["config_hash"],
            "train_rationale_spec": ckpt["spec"]["rationale"], "sample_rationale_spec": spec["rationale"],
            "sampler": spec["sampler"], "steps": spec["steps"], "options": options, "seed_set": seed_set,
            "n_samples": n_samples, "nfe": nfe(spec["sampler"], spec["steps"], options)}
    save_imageset(out, data, generation=json.dumps(info, sort_keys=True))
    if grid:
        save_grid(grid, data.images)
    _log_generated(log_path, info, done_images, elapsed, dev)
    for p in parts.iterdir():
        p.unlink()
    parts.rmdir()
    return data


def _sampler(net: torch.nn.Module, dev: torch.device, autocast: Any, ckpt: Mapping[str, Any],
             spec: Mapping[str, Any], schedule: Rationale, options: Mapping[str, Any], labels_all: np.ndarray,
             seed_set: int, out: str | Path) -> Callable[[list[int]], np.ndarray]:
    """The images of the given indices as uint8, each from its own counter-based noise; a non-finite sample stops."""
    shape = (ckpt["channels"], ckpt["resolution"], ckpt["resolution"])

    def call(x, sigma, labels):
        with autocast:
            return net(x, sigma, labels)

    def sample(idx: list[int]) -> np.ndarray:
        rnd = PerImageNoise([seed_set * SEED_SET_STRIDE + i for i in idx], dev)
        latents = rnd.randn((len(idx), *shape))
        labels = torch.as_tensor(labels_all[idx], device=dev) if ckpt["num_classes"] else None
        with torch.no_grad():
            x = SAMPLERS[spec["sampler"]](call, latents, schedule, spec["steps"], class_labels=labels, generator=rnd,
                                          **options)
        if not torch.isfinite(x).all():
            raise GenerationError(f"{out}: the sampler produced non-finite values (images {idx[0]}–{idx[-1]}); "
                                  f"nothing was written. The schedule or the checkpoint is unusable")
        return to_uint8(x.float()).cpu().numpy()

    return sample


def _shards(sample: Callable[[list[int]], np.ndarray], parts: Path, identity: Mapping[str, Any],
            labels_all: np.ndarray, num_classes: int, shard_size: int, batch_size: int) -> tuple[list[Path], int]:
    """Every shard of the set under `parts`, reusing those made from the same identity; the shard paths and how
    many images were sampled now."""
    n_samples = len(labels_all)
    shards, done_images = [], 0
    for start in range(0, n_samples, shard_size):
        stop = min(start + shard_size, n_samples)
        path = parts / f"shard-{start}-{stop}.npz"
        shards.append(path)
        key = identity_hash({**identity, "images": [start, stop]})
        if _reusable(path, key):
            continue
        images, batch_size = _in_batches(sample, start, stop, batch_size)
        done_images += stop - start
        save_imageset(path, ImageSet(np.concatenate(images), labels_all[start:stop], num_classes), shard=key)
    return shards, done_images


def _log_generated(log_path: str | Path | None, info: Mapping[str, Any], done_images: int, elapsed: float,
                   dev: torch.device) -> None:
    """The generation's JSON log line (and its rates on stderr)."""
    line = {"event": "generated", "images": done_images, "seconds": elapsed, "device": str(dev),
            "images_per_s": done_images / elapsed if done_images else None,
            "nfe_per_s": done_images * info["nfe"] / elapsed if done_images else None, **info}
    if log_path:
        with open(log_path, "a") as f:
            f.write(json.dumps(line) + "\n")
    print(json.dumps({k: line[k] for k in ("images", "seconds", "images_per_s", "nfe_per_s")}), file=sys.stderr)


def _in_batches(sample: Callable[[list[int]], np.ndarray], start: int, stop: int, batch_size: int
                ) -> tuple[list[np.ndarray], int]:
    """Images start … stop − 1 in batches; on a CUDA out-of-memory error the batch is halved and the rest goes on
    at the largest size that fits (images do not depend on the batch size)."""
    images, b0 = [], start
    while b0 < stop:
        try:
            images.append(sample(list(range(b0, min(b0 + batch_size, stop)))))
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
            torch.cuda.empty_cache()
            batch_size //= 2
            print(json.dumps({"event": "out of memory", "batch_size": batch_size}), file=sys.stderr)
            continue
        b0 += batch_size
    return images, batch_size


def _reusable(path: Path, key: str) -> bool:
    """A finished shard from before a kill, made from the same checkpoint content, spec and seed set."""
    if not path.exists():
        return False
    try:
        if load_imageset_meta(path)[1].get("shard") == key:
            return True
    except DataError:
        pass  # truncated or corrupt
    path.unlink()  # another spec's or a damaged shard: regenerate
    return False
