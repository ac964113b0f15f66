"""ied.cost: the bill of a config, from the DAG, against Snakemake's own counts; the budget refuses before any job."""
import json
import math
import subprocess
import sys

import pytest
import yaml

from ied import cost
from ied.checks import load

from conftest import DEFAULT, E2E, REPO, VENV_ENV, hand_made_default, snakemake
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


def the_bill(configfiles, cwd, *config_args):
    """The rows the Snakefile bills a dry run of these config files with."""
    rows, _ = cost.dry_run(REPO / "Snakefile", cwd, [str(p) for p in configfiles], list(config_args),
                           cwd / ".bill.json")
    return {row["rule"]: row for row in rows}


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
    config = load([hand_made_default(tmp_path)], ["train={rationales: [ve], total_steps: 600, checkpoint_every: 300}",
                                            "sample={single: {rationales: [l2], n_samples: 100}, "
                                            "repeated: {rationales: [l2], n_samples: 100, sets: 1}, "
                                            "samplers: {em: {sampler: euler_maruyama, steps: 50}}}",
                                            "nfe_sweep={steps: [], nfe: []}", "ablation={sigma_n: []}",
                                            "nll={n_images: 64, checkpoints: last, probes: 2}"])
    rows = {r["rule"]: r for r in cost.bill(config, rates)}
    assert rows["train_segment"]["jobs_to_do"] == 2
    assert rows["train_segment"]["gpu_hours_to_do"] == pytest.approx(2 * 300 * 64 / 2000 / 3600)
    assert rows["generate"]["gpu_hours_to_do"] == pytest.approx(2 * 100 * 50 / 40000 / 3600)  # 2 checkpoints
    assert rows["evaluate"]["gpu_hours_to_do"] == pytest.approx(2 * 100 / 5000 / 3600)
    assert rows["nll"]["gpu_hours_to_do"] == pytest.approx(64 * 2 * 150 / 1500 / 3600)
    total = sum(rows[r]["gpu_hours_to_do"] for r in cost.GPU_RULES)
    assert rows["total"]["gpu_hours_to_do"] == pytest.approx(total) and rows["total"]["work_to_do"] is None


@pytest.mark.slow
def test_done_moves_to_the_done_column_after_a_run(e2e_run, monkeypatch):
    monkeypatch.chdir(e2e_run)  # the pretrained model's path is relative to the working directory
    bill = the_bill([DEFAULT, REPO / "tests" / "configs" / "e2e.yaml", e2e_run / "pretrained.yaml"], e2e_run)
    assert bill["total"]["jobs_to_do"] == 0 and bill["total"]["gpu_hours_to_do"] == 0
    assert (bill["train_segment"]["jobs_done"], bill["train_adaptive_segment"]["jobs_done"],
            bill["teacher"]["jobs_done"], bill["fit_rationale"]["jobs_done"], bill["generate"]["jobs_done"],
            bill["evaluate"]["jobs_done"], bill["nll"]["jobs_done"]) == (4, 2, 1, 7, 68, 68, 7)
    result = subprocess.run([sys.executable, "-m", "ied", "cost", *E2E, "--table", "bill"],
                            cwd=e2e_run, env=VENV_ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("to run: 0 GPU jobs, ≈ 0.0 GPU-hours at the paper's")
    assert "| generate | images × NFE | 68 | 0 |" in (e2e_run / "bill.md").read_text()


@pytest.mark.slow
def test_a_budget_below_the_estimate_refuses_before_any_job(tmp_path):
    small = ["--configfile", DEFAULT, "--config", "train={total_steps: 600, checkpoint_every: 300}"]
    refused = snakemake("--cores", "1", *small, "budget={gpu_hours: 0.001}", cwd=tmp_path, check=False)
    lines = [l for l in refused.stderr.splitlines() if l.startswith("Config error:")]
    assert refused.returncode != 0 and len(lines) == 1 and "Traceback" not in refused.stderr
    assert "config key 'budget.gpu_hours': this run needs ≈ 0.3 GPU-hours at the paper's A100 figures" in lines[0]
    assert lines[0].endswith("over the budget of 0.001; the largest: generate × 110 (0.1 h), train_segment × 6 "
                             "(0.1 h), fit_rationale × 6 (0.0 h)")
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
        load([DEFAULT], [f"budget={{throughput: {bad}}}"])
    from test_cli import assert_one_line, ied
    assert_one_line(ied("cost", "--throughput", bad, cwd=tmp_path), "bench.json: no training or sampling")


# --- what the bill charges, written out ---------------------------------------------------------------------------
def test_a_heun_cells_work_is_its_calls_of_the_denoiser():
    """Heun with s steps calls the denoiser 2s − 1 times (no correction on the last step); EM s times."""
    config = load([DEFAULT], ["nfe_sweep={steps: [], nfe: []}", "ablation={sigma_n: []}",
                                            "sample={samplers: {h: {sampler: heun, steps: 7}, em: {sampler: "
                                            "euler_maruyama, steps: 9}}, single: {samplers: [h]}, "
                                            "repeated: {samplers: [em]}}"])
    work = {job.output: job.work for job in cost.jobs(config, cost.PAPER_A100) if job.rule == "generate"}
    heun = [w for out, w in work.items() if "/h/" in out]
    em = [w for out, w in work.items() if "/em/" in out]
    assert heun and set(heun) == {360 * (2 * 7 - 1)} and em and set(em) == {360 * 9}


def rows(to_do: float, done: float = 0.0) -> list[dict]:
    row = {"rule": "generate", "unit": "", "jobs_done": 3, "jobs_to_do": 2, "work_done": 1.0, "work_to_do": 1.0,
           "gpu_hours_done": done, "gpu_hours_to_do": to_do}
    return [row, {**row, "rule": "total", "work_done": None, "work_to_do": None}]


def test_the_budget_refuses_only_what_is_to_do_over_it():
    cost.check_budget(rows(1.0), 2.0, cost.PAPER_A100)  # under
    cost.check_budget(rows(2.0), 2.0, cost.PAPER_A100)  # equal: within the budget
    cost.check_budget(rows(1.0, done=1e6), 2.0, cost.PAPER_A100)  # done hours are never charged
    cost.check_budget(rows(1e6), None, cost.PAPER_A100)  # no budget
    with pytest.raises(cost.CostError, match=r"needs ≈ 2.0 GPU-hours .* over the budget of 1.99; the largest: "
                                             r"generate × 2 \(2.0 h\)"):
        cost.check_budget(rows(2.0), 1.99, cost.PAPER_A100)


@pytest.mark.parametrize("rate, message", [(-2000.0, "is -2000.0, not a positive finite rate"),
                                           (0, "is 0, not a positive finite rate"),
                                           ("fast", "is 'fast', not a positive finite rate"),
                                           (math.inf, "is inf, not a positive finite rate")])
def test_a_rate_that_is_not_positive_and_finite_is_refused(tmp_path, rate, message):
    report = {"training": [{"batch_size": 1, "mode": "fp32", "images_per_s": 100.0}],
              "sampling": [{"batch_size": 1, "mode": "fp32", "heun": {"nfe_per_s": rate}}]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(report))
    with pytest.raises(cost.CostError, match=r"bench.json: sampling\[0\].heun.nfe_per_s " + message.replace(".", r"\.")):
        cost.read_throughput(path)


# --- the bill is Snakemake's plan for this invocation: forced runs billed, commands that run nothing free ----------
def finished_copy(e2e_run, tmp_path):
    """A copy of the finished shared run (times kept), to force and touch without disturbing it."""
    import shutil
    copy = tmp_path / "run"
    shutil.copytree(e2e_run, copy, symlinks=True)
    return copy


def bill_line(stderr: str) -> str:
    lines = [l for l in stderr.splitlines() if l.startswith("to run: ")]
    assert len(lines) == 1, stderr[-2000:]
    return lines[0]


@pytest.mark.slow
def test_forced_runs_are_billed_and_refused_over_the_budget(e2e_run, tmp_path):
    run = finished_copy(e2e_run, tmp_path)
    tiny = ["--config", "budget={gpu_hours: 1.0e-9}"]
    nothing = snakemake("-n", *E2E, *tiny, cwd=run)
    assert "Nothing to be done" in nothing.stdout + nothing.stderr
    assert bill_line(nothing.stderr).startswith("to run: 0 GPU jobs, ≈ 0.0 GPU-hours")
    forced = snakemake("-n", "--forceall", *E2E, *tiny, cwd=run)  # a dry run is billed, never refused
    jobs = job_counts("--forceall", *E2E, cwd=run)
    assert bill_line(forced.stderr).startswith(f"to run: {sum(jobs[r] for r in cost.GPU_RULES)} GPU jobs")
    assert cost.GPU_RULES and all(jobs[r] for r in cost.GPU_RULES)
    nll = sorted((run / "results" / "e2e" / "nll").rglob("*.parquet"))
    before = {p: p.stat().st_mtime_ns for p in nll}
    for force in (["--forcerun", "nll"], ["-R", "nll"]):
        refused = snakemake("--cores", "1", *force, *E2E, *tiny, cwd=run, check=False)
        lines = [l for l in refused.stderr.splitlines() if l.startswith("Config error:")]
        assert refused.returncode != 0 and len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
        assert lines[0].startswith("Config error: config key 'budget.gpu_hours': this run needs ≈")
        assert f"the largest: nll × {len(nll)}" in lines[0]
    assert nll and {p: p.stat().st_mtime_ns for p in nll} == before  # nothing ran
    assert not list((run / ".snakemake" / "locks").glob("*"))  # and no lock was left behind


@pytest.mark.slow
def test_commands_that_run_no_job_are_never_refused(e2e_run, tmp_path):
    """--unlock, --lint, --list-rules, --dag, --cleanup-metadata, --report and --touch, with GPU work planned far over
    the budget (everything forced); and a target that needs only a CPU job runs."""
    run = finished_copy(e2e_run, tmp_path)
    tiny = ["--config", "budget={gpu_hours: 1.0e-9}"]
    metrics = "results/e2e/metrics.parquet"
    for command in (["--unlock"], ["--list-rules"], ["--dag", "--forceall"], ["--lint"],
                    ["--cleanup-metadata", metrics], ["--report", "report.html"], ["--touch", "--cores", "1"]):
        result = snakemake(*command, *E2E, *tiny, cwd=run, check=False)
        assert result.returncode == 0 and "budget.gpu_hours" not in result.stderr, (command, result.stderr[-2000:])
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    schedule = "results/digits-default/schedules/l2.parquet"
    result = snakemake(schedule, "--cores", "1", "--configfile", DEFAULT, *tiny, cwd=fresh, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert bill_line(result.stderr).startswith("to run: 0 GPU jobs") and (fresh / schedule).is_file()


def test_the_nfe_sweeps_work_is_each_solvers_calls_at_its_nfe_target(tmp_path, monkeypatch):
    """The default sweep at NFE 5, 10, 20 (Heun 5, 9, 19): every point's work is 360 images × its NFE, whatever the
    solver's steps are."""
    monkeypatch.chdir(tmp_path)  # no finished run whose cells keep their names
    config = load([DEFAULT])
    work = {job.output: job.work for job in cost.jobs(config, cost.PAPER_A100) if job.rule == "generate"}
    swept = {out.split("/")[-2]: w for out, w in work.items() if "/l2/900/edm7/" in out}
    assert swept == {"heun-3": 360 * 5, "heun-5": 360 * 9,
                     "heun-10": 360 * 19, **{f"{solver}-{n}": 360 * n for solver in ("dpmpp_2m", "ipndm", "unipc")
                                             for n in (5, 10, 20)}}


def test_each_end_to_end_fit_of_the_cifar10_configs_costs_at_most_a_quarter_of_a_set_at_its_nfe(tmp_path,
                                                                                                   monkeypatch):
    """48 pilot images (36 fitted, 12 held out), the evaluations at their bound: each fit's work ≤ 25 % of one 50K
    set at its NFE (LD3 needs 5–60 GPU-minutes, GAS 1–9 GPU-hours); the shared teacher is a job of its own."""
    monkeypatch.chdir(tmp_path)
    local = local_stand_ins(tmp_path)
    for name in ("edm-pretrained-cifar10-uncond", "edm-pretrained-cifar10"):
        config = yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text())
        network = tmp_path / next(iter(config["pretrained"].values()))["path"]
        network.parent.mkdir(parents=True, exist_ok=True)
        from test_config import write_stand_in_network
        write_stand_in_network(network, img_channels=3, img_resolution=32, label_dim=0 if "uncond" in name else 10)
        config = load([REPO / "config" / f"{name}.yaml", local])
        fits = {job.output.split("/")[-1]: job.work for job in cost.jobs(config, cost.PAPER_A100)
                if job.rule == "fit_rationale"}
        ends = {n: spec for n, spec in config["rationales"].items() if spec.get("method") == "end_to_end"}
        assert len(ends) == 6 and len(fits) == 8
        for rationale, spec in ends.items():
            share = fits[f"{rationale}.parquet"] / (50_000 * spec["nfe"])
            print(f"{name} {rationale}: {share:.1%} of a 50K set at NFE {spec['nfe']}")
            assert share <= 0.25, (rationale, share)
        teachers = [job for job in cost.jobs(config, cost.PAPER_A100) if job.rule == "teacher"]
        assert len(teachers) == 1 and teachers[0].work == 48 * (1 + 119 * 8)
