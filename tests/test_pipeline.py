import math
import re
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from ied.config import load
from ied.pipeline import cells

from conftest import REPO, VENV_ENV

SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
DEFAULT = REPO / "config" / "config.yaml"


def snakemake(*args, cwd, check=True):
    result = subprocess.run([*SNAKEMAKE, "-d", str(cwd), *map(str, args)], capture_output=True, text=True, env=VENV_ENV,
                            cwd=cwd, timeout=1800)
    if check and result.returncode != 0:
        raise AssertionError(result.stdout[-3000:] + result.stderr[-3000:])
    return result


def job_counts(*configfiles, cwd):
    out = snakemake("-n", "--quiet", "rules", "--configfile", *configfiles, cwd=cwd).stdout
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", out, re.M)}


def test_default_config_cross_product():
    config = load([DEFAULT])
    assert len(cells(config)) == 3 * 2 * 4 * 2 + 4  # train × checkpoints × sample × samplers + ablation
    assert config["sample"]["samplers"]["em"]["options"] == {}  # schema defaults are filled in


def test_a_new_rationale_is_a_config_entry(tmp_path):
    before = job_counts(DEFAULT, cwd=tmp_path)
    extra = tmp_path / "bump.yaml"
    extra.write_text(yaml.safe_dump({
        "rationales": {"bump": {"family": "expression", "density": "exp(-(log(sigma) - m)**2)", "params": {"m": 0.0},
                                "sigma_min": 0.002, "sigma_max": 80, "label": "bump"}},
        "sample": {"rationales": ["ve", "l2", "gauss5", "edm7", "bump"]}}))
    after = job_counts(DEFAULT, extra, cwd=tmp_path)
    per_sampling_rationale = 3 * 2 * 2  # train rationales × checkpoints × samplers
    assert after["generate"] == before["generate"] + per_sampling_rationale
    assert after["evaluate"] == before["evaluate"] + per_sampling_rationale
    assert after["tabulate_schedule"] == before["tabulate_schedule"] + 1
    extra.write_text(yaml.safe_dump({**yaml.safe_load(extra.read_text()),
                                     "train": {"rationales": ["ve", "l2", "gauss5", "bump"]}}))
    trained = job_counts(DEFAULT, extra, cwd=tmp_path)
    assert trained["train_segment"] == before["train_segment"] + 3
    assert trained["generate"] == after["generate"] + 2 * 5 * 2


@pytest.mark.parametrize("name, generate", [("paper-cifar10", 3 * 20 * 5 * 5 + 6), ("paper-imagenet32", 3 * 20 * 5 * 4)])
def test_paper_dags_build_with_gpu_training(tmp_path, name, generate):
    (tmp_path / "data").mkdir()
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"stand-in: the dry run only checks the file exists")
    override = tmp_path / "local.yaml"
    override.write_text(yaml.safe_dump({"dataset": {"data_root": str(tmp_path / "data")},
                                        "evaluate": {"feature_extractor_weights_path": str(weights)}}))
    counts = job_counts(REPO / "config" / f"{name}.yaml", override, cwd=tmp_path)
    assert counts["train_segment"] == 3 * 20 and counts["generate"] == generate
    out = snakemake("-n", "--configfile", REPO / "config" / f"{name}.yaml", override, cwd=tmp_path).stdout
    blocks = out.split("rule ")
    train_blocks = [b for b in blocks if b.startswith("train_segment:")]
    assert train_blocks and all("gpu=1" in b and "gpu_model=a100" in b for b in train_blocks)
    assert all("gpu=" not in b for b in blocks if b.startswith(("tabulate_schedule:", "tables:", "figures:")))


def test_lint_is_clean(tmp_path):
    result = snakemake("--lint", cwd=REPO)
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_profile_is_found_from_repo_root():
    profile = yaml.safe_load((REPO / "slurm" / "config.v8+.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["retries"] >= 1


@pytest.mark.slow
def test_end_to_end_reduced_default(tmp_path):
    snakemake("--cores", "2", "--configfile", DEFAULT, REPO / "tests" / "configs" / "e2e.yaml", cwd=tmp_path)
    exp = tmp_path / "results" / "e2e"
    metrics = pd.read_parquet(exp / "metrics.parquet")
    assert len(metrics) == 2 * 2 * 2 * 2 * 2 + 2
    for column in ("fid", "isc_mean", "isc_std", "kid_mean", "kid_std"):
        assert metrics[column].map(math.isfinite).all(), column
    for name in ("fid_is", "fid_std"):
        for ext in ("parquet", "md", "tex"):
            assert (exp / "tables" / f"{name}.{ext}").stat().st_size > 0
    fid_std = pd.read_parquet(exp / "tables" / "fid_std.parquet")
    assert fid_std["fid_std"].notna().all() and len(fid_std) == 2 * 2 * 2
    figures = sorted(p.name for p in (exp / "figures").iterdir())
    assert len(figures) == 14 and all((exp / "figures" / f).stat().st_size > 1000 for f in figures)
    assert (exp / "report.md").read_text().count("![") == 7
    logs = list((exp / "logs").rglob("*.log"))
    assert {p.parent.name for p in logs} >= {"prepare_data", "train_segment", "generate", "evaluate", "figures"}
    # the HTML report holds every figure and the Markdown tables
    snakemake("--report", tmp_path / "report.html", "--configfile", DEFAULT, REPO / "tests" / "configs" / "e2e.yaml",
              cwd=tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert all(f in html for f in figures if f.endswith(".png")) and "fid_is.md" in html
    # a second invocation has nothing left to do
    assert "Nothing to be done" in snakemake("--cores", "2", "--configfile", DEFAULT,
                                             REPO / "tests" / "configs" / "e2e.yaml", cwd=tmp_path).stderr
