"""The paper path end to end on CPU: config/paper-*.yaml through Snakemake with tiny overrides, on synthetic data
in the upstream formats, scored by the real Inception code path (`inception-v3-compat` loaded by path) with
randomly initialised weights saved as torch-fidelity saves its own. Every table and figure of each run is made."""
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ied.io import sha256_file
from ied.layout import artefacts

from conftest import REPO, snakemake
from test_data import write_fake_cifar, write_fake_imagenet32

pytestmark = pytest.mark.slow
TINY_NET = {"base_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "dropout": 0.0, "attention": True}


def run_paper_config(tmp_path: Path, name: str, data_root: Path, weights: Path, overrides: dict) -> Path:
    from ied.config import merge
    tiny = merge({"experiment": f"{name}-tiny",
            "dataset": {"data_root": str(data_root), "verify_checksums": False},
            "evaluate": {"feature_extractor_weights_path": str(weights), "feature_extractor_sha256": sha256_file(weights),
                         "batch_size": 64},
            "train": {"network": TINY_NET, "batch_size": 8, "total_steps": 4, "checkpoint_every": 2, "log_every": 1}},
                 overrides)
    override = tmp_path / "tiny.yaml"
    override.write_text(yaml.safe_dump(tiny, allow_unicode=True))
    snakemake("--cores", "2", "--configfile", REPO / "config" / f"{name}.yaml", override, cwd=tmp_path)
    return tmp_path / "results" / f"{name}-tiny"


def assert_every_artefact(exp: Path, name: str) -> dict:
    from ied.checks import load
    config = load([REPO / "config" / f"{name}.yaml", exp.parents[1] / "tiny.yaml"], deep=False)
    names = artefacts(config)
    for stem in names["tables"].values():
        for ext in ("parquet", "md", "tex"):
            assert (exp / "tables" / f"{stem}.{ext}").stat().st_size > 100, stem
    for stem in names["figures"].values():
        for ext in ("png", "pdf"):
            assert (exp / "figures" / f"{stem}.{ext}").stat().st_size > 1000, stem
    metrics = pd.read_parquet(exp / "metrics.parquet")
    assert (metrics["extractor"] == "inception-v3-compat").all()
    assert metrics[["fid", "isc_mean", "kid_mean", "precision", "recall"]].notna().all().all()
    return names


def test_cifar10_paper_config_end_to_end(tmp_path, inception):
    data = write_fake_cifar(tmp_path / "cifar10", n_per_batch=30).parent
    exp = run_paper_config(tmp_path, "paper-cifar10", data, inception, {
        "sample": {"samplers": {"em": {"steps": 3}}, "single": {"rationales": ["ve", "gauss5"], "n_samples": 20},
                   "repeated": {"rationales": ["gauss5", "edm7"], "n_samples": 20, "sets": 2, "up_to": 2},
                   "batch_size": 20},
        "train": {"rationales": ["ve"]},
        "ablation": {"sigma_n": [1, 5]}})
    names = assert_every_artefact(exp, "paper-cifar10")
    assert (names["tables"]["single"], names["tables"]["repeated"]) == ("table1", "table3")
    assert {"fig3_fid_is_over_training", "fig5_sigma_n_ablation", "fig6_fid_over_sets", "fig8_samples"} <= set(
        names["figures"].values())
    assert (pd.read_parquet(exp / "metrics.parquet")["reference_split"] == "test").all()
    assert_evaluations_follow_the_weights_content(tmp_path, inception, len(pd.read_parquet(exp / "metrics.parquet")))


def assert_evaluations_follow_the_weights_content(workdir: Path, weights: Path, evaluations: int) -> None:
    """A moved Inception weights file with the same content, or its digest written as 8 or 64 hex digits, reruns
    nothing; other weights rerun every evaluation (and what follows it)."""
    from test_pipeline import job_counts
    tiny = yaml.safe_load((workdir / "tiny.yaml").read_text())
    moved = workdir / "elsewhere" / "inception copy.pth"
    moved.parent.mkdir()
    moved.write_bytes(weights.read_bytes())
    for path, digest in ((weights, sha256_file(weights)[:8]), (moved, sha256_file(weights))):
        tiny["evaluate"].update(feature_extractor_weights_path=str(path), feature_extractor_sha256=digest)
        edit = workdir / "edit.yaml"
        edit.write_text(yaml.safe_dump(tiny, allow_unicode=True))
        assert job_counts("--configfile", REPO / "config" / "paper-cifar10.yaml", edit, cwd=workdir) == {}, path
    moved.write_bytes(weights.read_bytes() + b"\0")
    tiny["evaluate"]["feature_extractor_sha256"] = sha256_file(moved)
    edit.write_text(yaml.safe_dump(tiny, allow_unicode=True))
    counts = job_counts("--configfile", REPO / "config" / "paper-cifar10.yaml", edit, cwd=workdir)
    assert counts["evaluate"] == evaluations and "generate" not in counts and "train_segment" not in counts


def test_imagenet32_paper_config_end_to_end(tmp_path, inception):
    data = write_fake_imagenet32(tmp_path / "imagenet32", n_per_batch=10)
    exp = run_paper_config(tmp_path, "paper-imagenet32", data, inception, {
        "sample": {"samplers": {"em": {"steps": 3}}, "single": {"rationales": ["ve", "gauss5"], "n_samples": 20},
                   "repeated": {"rationales": ["gauss5", "edm7"], "n_samples": 20, "sets": 2, "checkpoints": [4]},
                   "batch_size": 20},
        "train": {"rationales": ["ve"]}})
    names = assert_every_artefact(exp, "paper-imagenet32")
    assert (names["tables"]["single"], names["tables"]["repeated"]) == ("table2", "table4")
    assert {"fig4_fid_is_over_training", "fig7_fid_over_sets", "fig9_samples"} <= set(names["figures"].values())
    assert (pd.read_parquet(exp / "metrics.parquet")["reference_split"] == "val").all()
