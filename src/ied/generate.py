"""Generate images from a checkpoint's EMA denoiser: per-image seeds, resumable shards, sample grids."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ied.data import DataError, ImageSet, load_imageset, save_imageset, to_uint8
from ied.io import atomic_path
from ied.rationales import build
from ied.samplers import SAMPLERS, nfe
from ied.train import load_ema_denoiser

SEED_SET_STRIDE = 10_000_000  # image i of seed set k uses seed k·stride + i


class StackedRandomGenerator:
    """One torch.Generator per image (as NVlabs/edm): image i is the same whatever the batch size."""

    def __init__(self, device: torch.device | str, seeds: list[int]):
        self.generators = [torch.Generator(device).manual_seed(int(s)) for s in seeds]

    def randn(self, size: tuple[int, ...], dtype=torch.float32, device=None) -> torch.Tensor:
        return torch.stack([torch.randn(size[1:], generator=g, dtype=dtype, device=g.device)
                            for g in self.generators]).to(device or self.generators[0].device)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.randn(tuple(x.shape), dtype=x.dtype, device=x.device)


def balanced_labels(n: int, num_classes: int, seed_set: int) -> np.ndarray:
    """Labels i mod classes, shuffled by the seed set."""
    return np.random.default_rng([seed_set, 12345]).permutation(np.arange(n) % num_classes).astype(np.int64)


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


def generate(checkpoint: str | Path, rationale: Mapping[str, Any], sampler: str, steps: int, out: str | Path, *,
             options: Mapping[str, Any] | None = None, n_samples: int, seed_set: int = 0, batch_size: int = 256,
             shard_size: int = 1000, grid: str | Path | None = None, meta: Mapping[str, Any] | None = None,
             device: str = "auto", log_path: str | Path | None = None) -> ImageSet:
    """Sample `n_samples` images into `out` (.npz); finished shards in `out`.parts/ survive a kill."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    denoiser, ckpt = load_ema_denoiser(checkpoint, device=dev)
    shape = (ckpt["channels"], ckpt["resolution"], ckpt["resolution"])
    num_classes, ckpt_step, train_config = ckpt["num_classes"], ckpt["step"], ckpt["config"]
    schedule = build("sample", dict(rationale))
    options = dict(options or {})
    labels_all = balanced_labels(n_samples, num_classes, seed_set)
    parts = Path(str(out) + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast(
        "cpu", enabled=False)

    def call(x, sigma, labels):
        with autocast:
            return denoiser(x, sigma, labels)

    shards, done_images, tick = [], 0, time.perf_counter()
    for shard, start in enumerate(range(0, n_samples, shard_size)):
        stop = min(start + shard_size, n_samples)
        path = parts / f"shard-{shard:05d}-{start}-{stop}.npz"
        shards.append(path)
        if path.exists():
            try:
                load_imageset(path)
                continue  # finished before a kill: keep it
            except DataError:
                path.unlink()  # truncated or corrupt: regenerate
        images = []
        for b0 in range(start, stop, batch_size):
            idx = list(range(b0, min(b0 + batch_size, stop)))
            rnd = StackedRandomGenerator(dev, [seed_set * SEED_SET_STRIDE + i for i in idx])
            latents = rnd.randn((len(idx), *shape), device=dev)
            labels = torch.as_tensor(labels_all[idx], device=dev)
            with torch.no_grad():
                x = SAMPLERS[sampler](call, latents, schedule, steps, class_labels=labels, generator=rnd, **options)
            images.append(to_uint8(x.float()).cpu().numpy())
            done_images += len(idx)
        save_imageset(path, ImageSet(np.concatenate(images), labels_all[start:stop], num_classes))
    elapsed = time.perf_counter() - tick
    data = ImageSet(np.concatenate([load_imageset(p).images for p in shards]), labels_all, num_classes)
    info = {"checkpoint_step": ckpt_step, "train_rationale_spec": train_config.get("rationale"),
            "sample_rationale_spec": dict(rationale), "sampler": sampler, "steps": steps, "options": options,
            "seed_set": seed_set, "n_samples": n_samples, "nfe": nfe(sampler, steps), **dict(meta or {})}
    save_imageset(out, data, generation=json.dumps(info, sort_keys=True, default=str))
    if grid:
        save_grid(grid, data.images)
    line = {"event": "generated", "images": done_images, "seconds": elapsed,
            "images_per_s": done_images / elapsed if done_images else None,
            "nfe_per_s": done_images * nfe(sampler, steps) / elapsed if done_images else None, **info}
    if log_path:
        with open(log_path, "a") as f:
            f.write(json.dumps(line, default=str) + "\n")
    print(json.dumps({k: line[k] for k in ("images", "seconds", "images_per_s", "nfe_per_s")}), file=sys.stderr)
    for p in shards:
        p.unlink()
    parts.rmdir()
    return data


def generation_info(path: str | Path) -> dict:
    """The generation metadata stored with a samples file."""
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(str(npz["meta"]))
    return json.loads(meta.get("generation", "{}"))
