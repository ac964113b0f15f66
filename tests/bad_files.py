"""The files some cases of tests/configs/bad/ name (under files/): network pickles, reference statistics,
throughput reports and published results that are each wrong one way. Written by `write_all` into the folder the cases run in."""
from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import torch

import edm_pickle
import malformed_edm
from ied.networks import EDMPrecond


def _network(path: Path, **changes) -> None:
    kwargs = {**malformed_edm.KWARGS, "img_channels": 1, **changes}
    torch.manual_seed(0)
    edm_pickle.write(path, EDMPrecond(**kwargs).eval(), kwargs)


def _statistics(path: Path, mu: np.ndarray, sigma: np.ndarray) -> None:
    np.savez(path, mu=mu, sigma=sigma)


def _declared_only(path: Path, shape: tuple[int, int]) -> None:
    """An .npz whose sigma.npy header declares `shape`, its data a few deflated bytes (a bomb's header)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": shape})
    mu = io.BytesIO()
    np.save(mu, np.zeros(shape[0]))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("mu.npy", mu.getvalue())
        z.writestr("sigma.npy", np.lib.format.MAGIC_PREFIX + b"\x01\x00" + header.getvalue()[8:] + b"\0" * 64)


def write_all(folder: Path) -> Path:
    """Every file, under folder/files/; returns that folder."""
    files = folder / "files"
    files.mkdir(parents=True, exist_ok=True)
    _network(files / "net-ok.pkl")
    _network(files / "net-3x16x16.pkl", img_channels=3, img_resolution=16)
    _network(files / "net-1000-classes.pkl", label_dim=1000)
    _network(files / "net-sigma-data-nan.pkl", sigma_data=math.nan)
    (files / "not-a-pickle.pkl").write_text("# a network, honestly\n")
    malformed_edm.CASES["storage-payload-runs-code"][0](files / "runs-a-command.pkl", folder / "pwned")
    d = 128  # the digits CNN's features
    rng = np.random.default_rng(0)
    a = rng.standard_normal((d, d))
    covariance = a @ a.T / d
    _statistics(files / "sigma-minus-identity.npz", np.zeros(d), -np.eye(d))
    _statistics(files / "sigma-indefinite.npz", np.zeros(d), covariance - 2 * np.eye(d) * np.diag(covariance).max())
    _statistics(files / "sigma-asymmetric.npz", np.zeros(d), covariance + np.triu(np.ones((d, d))))
    _statistics(files / "sigma-zero.npz", np.zeros(d), np.zeros((d, d)))
    _statistics(files / "mu-complex.npz", np.zeros(d) + 1j, covariance)
    _declared_only(files / "sigma-20000x20000.npz", (20000, 20000))
    measured = {"device": "x", "training": [{"batch_size": 64, "mode": "fp32", "images_per_s": 1000.0}],
                "sampling": [{"batch_size": 64, "mode": "fp32", "heun": {"nfe_per_s": 5000.0}}]}
    (files / "bench-negative.json").write_text(json.dumps(
        {**measured, "features": {"ied-digits-cnn": {"images_per_s": -2000.0}}}))
    (files / "bench-string.json").write_text(json.dumps(
        {**measured, "training": [{"batch_size": 64, "mode": "fp32", "images_per_s": "fast"}]}))
    (files / "bench-nan.json").write_text(json.dumps({**measured, "nll": {"images_per_s": math.nan,
                                                                          "nfe_per_image": 200}}))
    (files / "published-fid-text.yaml").write_text(
        "edm-cifar10-32x32-cond-vp.pkl:\n- {solver: heun, schedule: EDM, nfe: 35, fid: low, source: a paper}\n")
    (files / "published-nfe-zero.yaml").write_text(
        "edm-cifar10-32x32-cond-vp.pkl:\n- {solver: heun, schedule: EDM, nfe: 0, fid: 2.0, source: a paper}\n")
    return folder
