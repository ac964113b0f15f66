"""ied.cost: the bill of a config, from the DAG, against Snakemake's own counts; the budget refuses before any job."""
import json
import math
import subprocess
import sys

import pytest
import yaml

from ied import cost
from ied.config import load_for_snakemake

from conftest import DEFAULT, E2E, REPO, VENV_ENV, snakemake
from test_pipeline import job_counts


def local_stand_ins(tmp_path):
    """Stand-ins for the paper configs' data and Inception weights (the checks open them, the bill does not)."""
    from ied.io import sha256_file
    from test_data import write_fake_cifar, write_fake_imagenet32
    write_fake_cifar(tmp_path / "data" / "cifar10")
    write_fake_imagenet32(tmp_path / "data" / "imagenet32")
    weights = tmp_path / "data" / "weights-inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"stand-in")
    local = tmp_path / "local.yaml"
    local.write_text(yaml.safe_dump({"dataset": {"verify_checksums": False},
                                     "evaluate": {"feature_extractor_sha256": sha256_file(weights)}}))
    return local


def the_bill(configfiles, cwd, throughput=cost.PAPER_A100):
    config = load_for_snakemake(configfiles, [])
    plan = cost.snakemake_plan(REPO / "Snakefile", cwd, [str(p) for p in configfiles], [])
    return {row["rule"]: row for row in cost.bill(config, throughput, plan)}


@pytest.mark.parametrize("name", ["config", "paper-cifar10", "paper-imagenet32"])
def test_the_jobs_are_the_dags(tmp_path, monkeypatch, name):
    """Before anything ran, every GPU job of the DAG is to do: the bill's counts are `snakemake -n`'s."""
    monkeypatch.chdir(tmp_path)
    files = [REPO / "config" / f"{name}.yaml"] + ([local_stand_ins(tmp_path)] if name != "config" else [])
    bill = the_bill(files, tmp_path)
    planned = job_counts("--configfile", *files, cwd=tmp_path)
    for rule in cost.GPU_RULES:
        assert bill[rule]["jobs_to_do"] == planned.get(rule, 0) and bill[rule]["jobs_done"] == 0, rule
    assert bill["total"]["jobs_to_do"] == sum(planned.get(r, 0) for r in cost.GPU_RULES)
    if name == "paper-cifar10":  # 3 models × 20 segments of 50K steps × 128 images, at 593 images/s: ≈ 180 h
        assert bill["train_segment"]["work_to_do"] == 3 * 20 * 50_000 * 128
        assert bill["train_segment"]["gpu_hours_to_do"] == pytest.approx(3 * 20 * 50_000 * 128 / 593 / 3600)


def test_gpu_hours_are_work_over_throughput(tmp_path):
    """A small config and a measured throughput file, the bill written out by hand."""
    report = {"device": "NVIDIA H100", "preset": "paper",
              "training": [{"batch_size": 64, "mode": "fp32", "images_per_s": 1000.0},
                           {"batch_size": 64, "mode": "bf16", "images_per_s": 2000.0}],
              "sampling": [{"batch_size": 256, "mode": "bf16", "euler_maruyama": {"nfe_per_s": 40000.0},
                            "heun": {"nfe_per_s": 36000.0}}],
              "features": {"ied-digits-cnn": {"images_per_s": 29000.0}, "inception-v3-compat": {"images_per_s": 5000.0}},
              "nll": {"images_per_s": 10.0, "nfe_per_image": 150}}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(report))
    rates = cost.read_throughput(path)
    assert (rates.train_images_per_s, rates.nfe_per_s, rates.eval_images_per_s) == (2000.0, 40000.0, 5000.0)
    assert rates.nll_nfe_per_s == 1500.0 and rates.nll_nfe_per_image == 150 and "NVIDIA H100" in rates.source
    config = load_for_snakemake([DEFAULT], ["train={rationales: [ve], total_steps: 600, checkpoint_every: 300}",
                                            "sample={single: {rationales: [l2], n_samples: 100}, "
                                            "repeated: {rationales: [l2], n_samples: 100, sets: 1}, "
                                            "samplers: {em: {sampler: euler_maruyama, steps: 50}}}",
                                            "nfe_sweep={steps: []}", "ablation={sigma_n: []}",
                                            "nll={n_images: 64, checkpoints: last, probes: 2}"])
    rows = {r["rule"]: r for r in cost.bill(config, rates)}
    assert rows["train_segment"]["jobs_to_do"] == 2
    assert rows["train_segment"]["gpu_hours_to_do"] == pytest.approx(2 * 300 * 64 / 2000 / 3600)
    assert rows["generate"]["gpu_hours_to_do"] == pytest.approx(2 * 100 * 50 / 40000 / 3600)  # 2 checkpoints
    assert rows["evaluate"]["gpu_hours_to_do"] == pytest.approx(2 * 100 / 5000 / 3600)
    assert rows["nll"]["gpu_hours_to_do"] == pytest.approx(64 * 2 * 150 / 1500 / 3600)
    total = sum(rows[r]["gpu_hours_to_do"] for r in cost.GPU_RULES)
    assert rows["total"]["gpu_hours_to_do"] == pytest.approx(total) and math.isnan(rows["total"]["work_to_do"])


@pytest.mark.slow
def test_done_moves_to_the_done_column_after_a_run(e2e_run, monkeypatch):
    monkeypatch.chdir(e2e_run)  # the pretrained model's path is relative to the working directory
    bill = the_bill([DEFAULT, REPO / "tests" / "configs" / "e2e.yaml", e2e_run / "pretrained.yaml"], e2e_run)
    assert bill["total"]["jobs_to_do"] == 0 and bill["total"]["gpu_hours_to_do"] == 0
    assert (bill["train_segment"]["jobs_done"], bill["generate"]["jobs_done"], bill["evaluate"]["jobs_done"],
            bill["nll"]["jobs_done"]) == (4, 36, 36, 5)
    result = subprocess.run([sys.executable, "-m", "ied", "cost", *E2E, "--table", "bill"],
                            cwd=e2e_run, env=VENV_ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("to run: 0 GPU jobs, ≈ 0.0 GPU-hours at the paper's")
    assert "| generate | images × NFE | 36 | 0 |" in (e2e_run / "bill.md").read_text()


@pytest.mark.slow
def test_a_budget_below_the_estimate_refuses_before_any_job(tmp_path):
    small = ["--configfile", DEFAULT, "--config", "train={total_steps: 600, checkpoint_every: 300}"]
    refused = snakemake("--cores", "1", *small, "budget={gpu_hours: 0.001}", cwd=tmp_path, check=False)
    lines = [l for l in refused.stderr.splitlines() if l.startswith("Config error:")]
    assert refused.returncode != 0 and len(lines) == 1 and "Traceback" not in refused.stderr
    assert "config key 'budget.gpu_hours': this run needs ≈ 0.2 GPU-hours at the paper's A100 figures" in lines[0]
    assert lines[0].endswith("over the budget of 0.001; the largest: generate × 61 (0.1 h), train_segment × 6 "
                             "(0.1 h), nll × 6 (0.0 h)")
    assert not (tmp_path / "results").exists()
    planned = snakemake("-n", *small, "budget={gpu_hours: 1000}", cwd=tmp_path)
    assert "to run: " in planned.stderr and "GPU jobs" in planned.stderr


def test_a_malformed_throughput_file_is_one_line(tmp_path):
    bad = tmp_path / "bench.json"
    bad.write_text("{not json")
    with pytest.raises(cost.CostError, match=r"bench.json: not a JSON file of `ied bench`"):
        cost.read_throughput(bad)
    bad.write_text(json.dumps({"device": "x"}))
    with pytest.raises(cost.CostError, match=r"bench.json: no training or sampling measurements"):
        cost.read_throughput(bad)
    from ied.config import ConfigError
    with pytest.raises(ConfigError, match=r"config key 'budget.throughput': .*bench.json: no training or sampling"):
        load_for_snakemake([DEFAULT], [f"budget={{throughput: {bad}}}"])
    from test_cli import assert_one_line, ied
    assert_one_line(ied("cost", "--throughput", bad, cwd=tmp_path), "bench.json: no training or sampling")
