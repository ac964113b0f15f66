"""The Snakemake pipeline: the DAG, what a config edit reruns, the end-to-end run and its report."""
import json
import math
import re
import subprocess
import sys

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from ied.checks import load
from ied.layout import cells

from conftest import DEFAULT, E2E, REPO, VENV_ENV, snakemake


def job_counts(*args, cwd):
    out = snakemake("-n", "--quiet", "rules", *args, cwd=cwd).stdout
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", out, re.M) if m.group(1) != "total"}


def test_default_config_cells_follow_the_papers_protocol(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no finished run whose cells keep their names
    config = load([DEFAULT])
    single = 4 * 3 * 3  # train (the adaptive one too) × checkpoints × VE/L2/N(0,5²), em: one set each
    # the paper's 3 models × checkpoints ≤ 600 × 4 rationales × 2 sets, less set 0 of single
    repeated = 3 * 2 * 4 * 2 - 3 * 2 * 3
    ablation = 3  # σ_N of 1, 3, 10 (σ_N = 5 is gauss5's cell)
    # the L2 model: edm7/ve/l2 and the cost density × heun, dpmpp_2m, ipndm, unipc × NFE 5, 10, 20 (heun 5, 9, 19),
    # and each grid fitted for one solver and NFE there only (four end to end, one by the dynamic programme)
    sweep = 4 * 4 * 3 + 5
    assert len(cells(config)) == single + repeated + ablation + sweep
    swept = {c.sampler for c in cells(config) if c.train == "l2" and c.step == 900 and c.sample == "edm7"}
    assert swept == {"heun-3", "heun-5", "heun-10", *(f"{solver}-{n}" for solver in ("dpmpp_2m", "ipndm", "unipc")
                                                      for n in (5, 10, 20))}
    fitted = {(c.sample, c.sampler) for c in cells(config) if config["rationales"].get(c.sample, {}).get("family") == "fitted"
              and c.sample != "fit-density"}
    assert fitted == {("fit-dpm-5", "dpmpp_2m-5"), ("fit-dpm-10", "dpmpp_2m-10"), ("fit-heun-5", "heun-3"),
                      ("fit-heun-9", "heun-5"), ("dp-dpm-10", "dpmpp_2m-10")}
    assert config["sample"]["samplers"]["em"]["options"] == {}  # schema defaults are filled in


def test_parsing_the_snakefile_imports_no_torch():
    """The config checks, specs and paths the Snakefile imports are torch-free (a login node parses in seconds)."""
    code = ("import sys; sys.path.insert(0, 'src'); import ied.config, ied.layout, ied.specs, ied.data; "
            "from ied.checks import load; load(['config/config.yaml']); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_new_rationale_is_a_config_entry(tmp_path):
    before = job_counts("--configfile", DEFAULT, cwd=tmp_path)
    extra = tmp_path / "bump.yaml"
    extra.write_text(yaml.safe_dump({
        "rationales": {"bump": {"family": "expression", "density": "exp(-(log(sigma) - m)**2)", "params": {"m": 0.0},
                                "sigma_min": 0.002, "sigma_max": 80, "label": "bump"}},
        "sample": {"single": {"rationales": ["ve", "l2", "gauss5", "bump"]}}}))
    after = job_counts("--configfile", DEFAULT, extra, cwd=tmp_path)
    per_sampling_rationale = 4 * 3  # train rationales × checkpoints, one set, em
    assert after["generate"] == before["generate"] + per_sampling_rationale
    assert after["evaluate"] == before["evaluate"] + per_sampling_rationale
    assert after["tabulate_schedule"] == before["tabulate_schedule"] + 1
    extra.write_text(yaml.safe_dump({**yaml.safe_load(extra.read_text()),
                                     "train": {"rationales": ["ve", "l2", "gauss5", "adaptive-l2", "bump"]},
                                     "sample": {"single": {"rationales": ["ve", "l2", "gauss5", "bump"]},
                                                "repeated": {"train_rationales": ["ve", "l2", "gauss5", "bump"]}}}))
    trained = job_counts("--configfile", DEFAULT, extra, cwd=tmp_path)
    assert trained["train_segment"] == before["train_segment"] + 3
    # its single sets (3 checkpoints × 4 rationales) and repeated sets not already single (2 × 4 × 2 − 2 × 3)
    assert trained["generate"] == after["generate"] + 3 * 4 + (2 * 4 * 2 - 2 * 3)


# --- what a config edit reruns, dry-run against the one finished pipeline (e2e_run) ------------------------
E2E_CONFIG = yaml.safe_load((REPO / "tests" / "configs" / "e2e.yaml").read_text())
AGGREGATION = {"aggregate": 1, "tables": 1, "figures": 1, "report": 1, "all": 1}
EDITS = {
    "nothing": ({}, {}),
    "relabel": ({"rationales": {"l2": {"label": "squared L2"}, "gauss5": {"label": "Gauss"}}},
                {"tables": 1, "figures": 1, "report": 1, "all": 1}),
    "log interval, device, precision": ({"train": {"log_every": 3, "device": "cpu", "precision": "fp32"}}, {}),
    # a number's spelling is not its identity: 0 is 0.0, 40.0 is 40
    "numbers spelled otherwise": ({"train": {"network": {"dropout": 0, "base_channels": 16.0}, "total_steps": 40.0,
                                             "batch_size": 64.0, "lr": 1.0e-3},
                                   "sample": {"single": {"n_samples": 40.0}, "samplers": {"em": {"steps": 8.0}}},
                                   "rationales": {"ve": {"sigma_max": 80.0}}, "ablation": {"sigma_n": [1.0, 5]}}, {}),
    "nll run-time settings": ({"nll": {"max_nfe": 500, "batch_size": 7, "device": "cpu"}}, {}),
    "batch and shard size": ({"sample": {"batch_size": 7, "shard_size": 5}, "evaluate": {"batch_size": 16}}, {}),
    "paper results path": ({"paper_results": str(REPO / "config" / "paper_results.yaml")}, {}),
    # (3 trained × 2 checkpoints + the pretrained model's one) × 2 samplers, one set, with ve (already tabulated);
    # the distance of each new UniPC cell from the flow (its models' references exist)
    "add a sampling rationale": ({"sample": {"single": {"rationales": ["l2", "gauss5", "ve"]}}},
                                 {"generate": 14, "evaluate": 14, "distance": 7, **AGGREGATION}),
    # its two segments; single: 2 checkpoints × 2 rationales × 2 samplers; repeated: 4 rationales × 2 sets,
    # less the 2 single sets of step 20 with em; the references and distances of its 4 UniPC cells
    "add a training rationale": ({"train": {"rationales": ["ve", "l2", "adaptive-l2", "gauss5"]},
                                  "sample": {"repeated": {"train_rationales": ["ve", "l2", "edm-tiny", "gauss5"]}}},
                                 {"train_segment": 2, "generate": 14, "evaluate": 14, "nll": 2, "reference": 4,
                                  "distance": 4, **AGGREGATION}),
    # its two segments (writing its density too) and its single sets: 2 checkpoints × 2 rationales × 2 samplers
    "add an adaptive training rationale": ({"rationales": {"adaptive-ve": {"family": "adaptive", "target": "ve",
                                                                           "bins": 10}},
                                            "train": {"rationales": ["ve", "l2", "adaptive-l2", "adaptive-ve"]}},
                                           {"train_adaptive_segment": 2, "generate": 8, "evaluate": 8, "nll": 2,
                                            "reference": 4, "distance": 4, **AGGREGATION}),
    # its table from the density at step 20, and its repeated sets: 3 models (VE, L2 at step 20, the pretrained
    # one) × 2 sets
    "add a learned rationale": ({"rationales": {"learned-20": {"family": "learned", "model": "adaptive-l2",
                                                               "step": 20}},
                                 "sample": {"repeated": {"rationales": ["l2", "gauss5", "edm7", "learned-l2",
                                                                        "learned-20"]}}},
                                {"learned_rationale": 1, "generate": 6, "evaluate": 6, **AGGREGATION}),
    # the adaptive density's spec is its model's identity: its training, its learned table and what samples them
    "adaptive decay": ({"rationales": {"adaptive-l2": {"ema": 0.9}}},
                       {"train_adaptive_segment": 2, "learned_rationale": 1, "generate": 14, "evaluate": 14, "nll": 2,
                        "reference": 4, "distance": 4, **AGGREGATION}),
    # its teacher, its fit, its one sweep cell (DPM-Solver++(2M) at NFE 7) with its distance, and the aggregation
    "add a fitted rationale": ({"rationales": {"fit-new": {"family": "fitted", "model": "l2", "method": "trajectory_dp",
                                                           "base": "ve", "sampler": "dpmpp_2m", "nfe": 7, "pilot": 2}},
                                "nfe_sweep": {"rationales": ["l2", "fit-dpm-3", "fit-density", "fit-new"]}},
                               {"teacher": 1, "fit_rationale": 1, "generate": 1, "evaluate": 1, "distance": 1,
                                **AGGREGATION}),
    # a fit of a base and pilot another fit has: that fit's teacher serves it
    "add a fit of the same teacher": ({"rationales": {"fit-new": {"family": "fitted", "model": "l2", "method": "end_to_end",
                                                                  "base": "edm7", "sampler": "ipndm", "nfe": 7,
                                                                  "pilot": 2}},
                                       "nfe_sweep": {"rationales": ["l2", "fit-dpm-3", "fit-density", "fit-new"]}},
                                      {"fit_rationale": 1, "generate": 1, "evaluate": 1, "distance": 1,
                                       **AGGREGATION}),
    # unipc's single sets ((3 trained × 2 checkpoints + 1) × 2 rationales) and their distances (the references are
    # the flow's, whatever the steps); its sweep points (3, 7 steps) stay
    "sampler steps": ({"sample": {"samplers": {"unipc": {"steps": 5}}}},
                      {"generate": 14, "evaluate": 14, "distance": 14, **AGGREGATION}),
    # a second seed of L2: that model's training, NLL, single sets (2 checkpoints × 2 rationales × em, unipc) and
    # repeated ones not already single (4 × 2 − 2), the references and distances of its unipc cells, the aggregation
    "add a seed": ({"train": {"seeds": {"default": [0], "l2": [0, 1]}}},
                   {"train_segment": 2, "nll": 2, "generate": 14, "evaluate": 14, "reference": 4, "distance": 4,
                    **AGGREGATION}),
    # a sampler only the sweep uses: its points are `<sampler>-<steps>`, so its configured steps rename nothing
    "swept sampler steps": ({"sample": {"samplers": {"dpmpp_2m": {"steps": 7}, "heun": {"steps": 2}}}}, {}),
    # the pretrained model's label is a label; its file moved (same content) is the same model
    "pretrained label and path": ({"pretrained": {"edm-tiny": {"label": "tiny EDM", "path": "moved/edm-tiny.pkl"}}},
                                  {"tables": 1, "figures": 1, "report": 1, "all": 1}),
}


@pytest.mark.slow
@pytest.mark.parametrize("edit", EDITS, ids=lambda e: e.replace(" ", "-").replace(",", ""))
def test_a_config_edit_reruns_only_what_it_changes(e2e_run, tmp_path, edit):
    patch, expected = EDITS[edit]
    if edit == "pretrained label and path":
        (e2e_run / "moved").mkdir(exist_ok=True)
        (e2e_run / "moved" / "edm-tiny.pkl").write_bytes((e2e_run / "edm-tiny.pkl").read_bytes())
    extra = tmp_path / "edit.yaml"
    extra.write_text(yaml.safe_dump(patch, allow_unicode=True))
    assert job_counts(*E2E, extra, cwd=e2e_run) == expected


@pytest.mark.slow
def test_lost_tables_and_figures_are_made_again_and_the_report_after_them(e2e_run, tmp_path):
    """A killed tables or figures job loses its outputs (Snakemake removes incomplete files) while report.md stays:
    the default target needs every table and figure itself, so the rerun makes them and then the report."""
    import shutil
    work = tmp_path / "copy"
    shutil.copytree(e2e_run, work, symlinks=True)
    exp = work / "results" / "e2e"
    for lost in (exp / "tables" / "table1.md", exp / "figures" / "fig3_fid_is_over_training.png"):
        lost.unlink()
    assert job_counts(*E2E, cwd=work) == {"tables": 1, "figures": 1, "report": 1, "all": 1}
    snakemake("--cores", "2", *E2E, cwd=work)
    assert (exp / "tables" / "table1.md").exists() and (exp / "figures" / "fig3_fid_is_over_training.png").exists()
    assert (exp / "report.md").stat().st_mtime >= (exp / "tables" / "table1.md").stat().st_mtime


@pytest.mark.slow
def test_nested_config_overrides_are_typed(e2e_run):
    """--config train="{log_every: 3, lr: 0.002}" reaches the config typed (Snakemake alone passes strings)."""
    assert job_counts(*E2E, "--config", "train={log_every: 3, lr: 0.002}", cwd=e2e_run)["train_segment"] == 4


# CIFAR-10: single 3×3×20, repeated 3×5×8×5 less their shared set 0 (3×3×8), 5 ablation σ_N (σ_N = 5: a grid cell);
# ImageNet-32: single 3×3×20 of 50K, repeated 3×5×20×4 of 25K
@pytest.mark.parametrize("name, generate", [("paper-cifar10", 180 + 600 - 72 + 5), ("paper-imagenet32", 180 + 1200)])
def test_paper_dags_build_with_gpu_training(tmp_path, name, generate):
    from test_data import write_fake_cifar, write_fake_imagenet32
    data = tmp_path / "data"
    write_fake_cifar(data) if name == "paper-cifar10" else write_fake_imagenet32(data)
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"stand-in: the dry run checks its sha256 against the configured one")
    from ied.io import sha256_file
    override = tmp_path / "local.yaml"
    override.write_text(yaml.safe_dump({"dataset": {"data_root": str(data), "verify_checksums": False},
                                        "evaluate": {"feature_extractor_weights_path": str(weights),
                                                     "feature_extractor_sha256": sha256_file(weights)}}))
    counts = job_counts("--configfile", REPO / "config" / f"{name}.yaml", override, cwd=tmp_path)
    assert counts["train_segment"] == 3 * 20 and counts["generate"] == generate
    out = snakemake("-n", "--configfile", REPO / "config" / f"{name}.yaml", override, cwd=tmp_path).stdout
    blocks = out.split("rule ")
    train_blocks = [b for b in blocks if b.startswith("train_segment:")]
    assert train_blocks and all("gpu=1" in b and "gpu_model=a100" in b for b in train_blocks)
    assert all("gpu=" not in b for b in blocks if b.startswith(("tabulate_schedule:", "tables:", "figures:")))
    reference = "data/val.npz" if name == "paper-imagenet32" else "data/test.npz"
    assert all(reference in b for b in blocks if b.startswith("evaluate:"))  # the FID reference split


def test_multi_gpu_training_launches_ranks_in_a_slurm_dry_run(tmp_path):
    """resources.train_segment.gpus: 4 → one SLURM job with 4 GPUs whose command starts 4 ranks on its node
    (`ied train --gpus 4` runs torchrun: ied.distributed.launch)."""
    from test_data import write_fake_cifar
    from ied.io import sha256_file
    data = write_fake_cifar(tmp_path / "data").parent
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"stand-in")
    override = tmp_path / "local.yaml"
    override.write_text(yaml.safe_dump({
        "dataset": {"data_root": str(data), "verify_checksums": False},
        "evaluate": {"feature_extractor_weights_path": str(weights), "feature_extractor_sha256": sha256_file(weights)},
        "resources": {"train_segment": {"gpus": 4, "gpu_model": "a100", "cpus": 32, "mem_mb": 128000}}}))
    out = snakemake("-n", "--profile", REPO / "slurm", "--configfile", REPO / "config" / "paper-cifar10.yaml", override,
                    cwd=tmp_path).stdout
    block = next(b for b in out.split("rule ") if b.startswith("train_segment:"))
    assert "gpu=4" in block and "cpus_per_task=32" in block
    assert "python -m ied train --gpus 4 " in out
    evaluate = next(b for b in out.split("rule ") if b.startswith("evaluate:"))
    assert "data/test.npz" in evaluate  # CIFAR-10's FID reference is its test split


def test_lint_is_clean():
    result = snakemake("--lint", cwd=REPO)
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_slurm_profile_dry_run_from_the_repository_root():
    """What a cluster user types, from the repository root: the profile is found and every rule is planned
    (--forceall: a finished `make run` in this checkout must not leave nothing to plan)."""
    result = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "slurm", "-n", "--forceall", "--quiet",
                             "rules"],
                            cwd=REPO, env=VENV_ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^train_segment\s+9$", result.stdout, re.M), result.stdout[-2000:]
    assert re.search(r"^to run: \d+ GPU jobs, ≈ [\d.,]+ GPU-hours at ", result.stderr, re.M)  # the bill, under SLURM


@pytest.mark.slow
def test_end_to_end_reduced_default(e2e_run):
    exp = e2e_run / "results" / "e2e"
    metrics = pd.read_parquet(exp / "metrics.parquet")
    # single 16 (VE, L2), repeated 16 − 4 shared (with the learned density), the ablation's σ_N = 1, the sweep's 5
    # samplers × NFE 3 and 7 with L2 and the fitted cost density, and the grid fitted for DPM-Solver++(2M) at NFE 3;
    # the adaptive model: single 8; the pretrained model: single 2 × 2, repeated 4 × 2 − 2 shared
    assert len(metrics) == 16 + 12 + 1 + 10 + 10 + 1 + 8 + 4 + 6
    assert set(metrics.loc[metrics["sample_rationale"] == "learned-l2", "train_rationale"]) == {"ve", "l2", "edm-tiny"}
    density = pd.read_parquet(exp / "densities" / "adaptive-l2" / "density-40.parquet")
    assert len(density) == 10 and density["count"].sum() == 40 * 64  # 10 bins; every example of 40 steps of 64
    sweep = metrics[metrics["sampler_name"].isin(["em-3", "em-7", "heun-2", "heun-4", "dpmpp_2m-3", "dpmpp_2m-7",
                                                   "ipndm-3", "ipndm-7", "unipc-3", "unipc-7"])
                    & (metrics["train_rationale"] == "ve") & (metrics["checkpoint_step"] == 40)]
    for sample in ("l2", "fit-density"):  # every sampler hits each NFE target
        assert sorted(sweep.loc[sweep["sample_rationale"] == sample, "nfe"]) == [3] * 5 + [7] * 5
    fitted = sweep[sweep["sample_rationale"] == "fit-dpm-3"]
    assert list(fitted["sampler_name"]) == ["dpmpp_2m-3"]  # a fitted grid is sampled at its own point only
    # every fitted rationale's table (the default's too, on 2 pilot images) holds its knots and its fit
    fits = sorted(p.stem for p in (exp / "schedules").iterdir() if p.stem.startswith(("fit-", "dp-")))
    assert fits == ["dp-dpm-10", "fit-density", "fit-dpm-10", "fit-dpm-3", "fit-dpm-5", "fit-heun-5", "fit-heun-9"]
    for name in fits:
        meta = pq.read_schema(exp / "schedules" / f"{name}.parquet").metadata
        assert json.loads(meta[b"ied.fit"])["checkpoint_step"] == 40 and b"ied.knots" in meta
    fit = json.loads(pq.read_schema(exp / "schedules" / "fit-dpm-3.parquet").metadata[b"ied.fit"])
    assert fit["method"] == "end_to_end" and fit["validation_error"]["end_to_end"] <= fit["validation_error"]["base"]
    assert len(list((exp / "teachers").rglob("*.npz"))) == 1  # one teacher: every fit has the L2 model, base, pilot
    nfe_rows = pd.read_parquet(exp / "tables" / "fid_nfe.parquet")
    assert {"fit-dpm-3", "fit-density"} <= set(nfe_rows["sample_rationale"])
    assert (metrics.loc[metrics["train_rationale"] == "edm-tiny", "checkpoint_step"] == 0).all()
    for column in ("fid", "isc_mean", "isc_std", "kid_mean", "kid_std", "precision", "recall"):
        assert metrics[column].map(math.isfinite).all(), column
    # the tiny models' sets at Euler–Maruyama's 3 to 8 steps and Heun's 2 leave the image range: flagged, not ranked
    clipped = metrics["saturated"] > 1 - 0.1 * (1 - 0.58)
    assert (clipped == (metrics["degenerate"] != "")).all() and set(metrics["reference_split"]) == {"test"}
    assert metrics.loc[clipped, "degenerate"].str.contains("saturated at 0 or 255").all()
    for score in ("fid", "kid_mean", "precision", "recall"):  # every set's intervals, or said why not (the tiny
        flat = metrics[f"{score}_lo"].isna()                  # models' precision is 0 in every resample)
        assert (metrics.loc[~flat, f"{score}_lo"] <= metrics.loc[~flat, f"{score}_hi"]).all(), score
        assert metrics.loc[flat, "interval"].str.contains(score).all() and metrics.loc[flat, f"{score}_hi"].isna().all()
    assert (metrics["fid_lo"] < metrics["fid"]).all() and (metrics["fid"] < metrics["fid_hi"]).all()
    deterministic = metrics[~metrics["sampler_name"].str.startswith("em")]
    assert deterministic["ref_rmse"].notna().all() and metrics.loc[metrics["sampler_name"].str.startswith("em"),
                                                                    "ref_rmse"].isna().all()
    assert sorted(p.name for p in (exp / "tables").iterdir()) == sorted(
        f"{name}.{ext}" for name in ("table1", "table3", "fid_nfe", "nll") for ext in ("parquet", "md", "tex"))
    table3 = pd.read_parquet(exp / "tables" / "table3.parquet")
    assert table3["fid_std"].notna().all() and len(table3) == 3 * 4 and (table3["sets"] == 2).all()
    trained = table3["train_rationale"] != "edm-tiny"
    assert (table3.loc[trained, "checkpoint_step"] == 20).all()  # the repeated range ends at 20
    assert (table3.loc[~trained, "checkpoint_step"] == 0).all()  # the pretrained model's one checkpoint
    for row in table3.itertuples():  # mean and sample std of the two sets' FIDs, from the metrics rows
        fids = metrics.query("train_rationale == @row.train_rationale and sample_rationale == @row.sample_rationale"
                             " and sampler_name == 'em' and checkpoint_step == @row.checkpoint_step")["fid"].to_numpy()
        assert len(fids) == 2 and row.fid_min == min(fids)
        assert row.fid_mean == pytest.approx((fids[0] + fids[1]) / 2, rel=1e-12)
        assert row.fid_std == pytest.approx(abs(fids[0] - fids[1]) / math.sqrt(2), rel=1e-12)
    table1 = pd.read_parquet(exp / "tables" / "table1.parquet")
    assert len(table1) == 4 * 2 * 2 and set(table1["checkpoint_step"]) <= {0, 20, 40}  # VE, L2, adaptive, pretrained
    assert "EDM tiny" in (exp / "tables" / "table1.md").read_text()
    best = metrics[(metrics["n_samples"] == 40) & (metrics["seed_set"] == 0)].groupby(
        ["sampler_name", "train_rationale", "sample_rationale"])["fid"].min()
    assert (table1.set_index(["sampler_name", "train_rationale", "sample_rationale"])["fid"] == best.loc[
        table1.set_index(["sampler_name", "train_rationale", "sample_rationale"]).index]).all()
    figures = sorted(p.name for p in (exp / "figures").iterdir())
    stems = ["fig1_rationales", "fig2_marginals", "fig3_fid_is_over_training", "fig5_sigma_n_ablation",
             "fig6_fid_over_sets", "fig8_samples", "paper_comparison", "loss_by_sigma", "fid_nfe", "nll_over_training",
             "adaptive_density"]
    assert figures == sorted(f"{s}.{e}" for s in stems for e in ("png", "pdf"))
    assert all((exp / "figures" / f).stat().st_size > 1000 for f in figures)
    nll = pd.read_parquet(exp / "tables" / "nll.parquet")
    assert len(nll) == 4 and nll[["bpd_best_fid", "bpd_last"]].notna().all().all()
    assert ((nll["bpd_last"] > 0) & (nll["bpd_last"] < 16)).all()  # bits/dim of 8-bit digits
    assert (exp / "report.md").read_text().count("![") == len(stems)
    logs = list((exp / "logs").rglob("*.log"))
    assert {p.parent.name for p in logs} >= {"prepare_data", "train_segment", "generate", "evaluate", "figures"}
    # the HTML report holds every figure and the Markdown tables
    snakemake("--report", e2e_run / "report.html", *E2E, cwd=e2e_run)
    html = (e2e_run / "report.html").read_text()
    assert all(f in html for f in figures if f.endswith(".png")) and "table1.md" in html
    assert "the best FID recorded during training" in html  # the captions of workflow/report/
    # a second invocation has nothing left to do
    assert "Nothing to be done" in snakemake("--cores", "2", *E2E, cwd=e2e_run).stderr


@pytest.mark.parametrize("name, counts", [
    # the reproduction (1 single set + 2 more repeated sets of 50K) and the study (4 schedules × 4 solvers × 4 NFE,
    # less Heun at NFE 35 on EDM ρ = 7: the reproduction's set 0), the cost density at every point, 4 fitted grids
    # at theirs, and their 5 fits
    # 3 sets of EDM's protocol; the sweep: 5 schedules for every point of Heun, DPM-Solver++(2M), UniPC (4 each) and
    # iPNDM (6), 6 grids at their own point, DPM-Solver++(3M) and UniPC-3 on logSNR-uniform at 4 points and one
    # UniPC-3 grid; Heun at NFE 35 on EDM ρ = 7 is the protocol's first set
    ("edm-pretrained-cifar10", {"import_network": 1, "generate": 3 + 5 * 18 + 6 + 4 + 5 - 1,
                                "evaluate": 3 + 5 * 18 + 6 + 4 + 5 - 1, "nll": 1, "prepare_data": 2, "teacher": 1,
                                "fit_rationale": 8}),
    ("edm-pretrained-cifar10-uncond", {"import_network": 1, "generate": 3 + 5 * 18 + 6 + 4 + 5 - 1,
                                       "evaluate": 3 + 5 * 18 + 6 + 4 + 5 - 1, "nll": 1, "prepare_data": 2,
                                       "teacher": 1, "fit_rationale": 8}),
    ("edm-pretrained-ffhq-64", {"import_network": 1, "generate": 4 + 2, "evaluate": 4 + 2}),
    ("edm-pretrained-afhqv2-64", {"import_network": 1, "generate": 4 + 2, "evaluate": 4 + 2}),
    ("edm-pretrained-imagenet64", {"import_network": 1, "generate": 3 + 2, "evaluate": 3 + 2}),
])
def test_pretrained_configs_plan_no_training(tmp_path, name, counts):
    """The published-network configs dry-run on local stand-ins of their files: one import, the sample sets and the
    study, and no training job."""
    import numpy as np

    from test_data import write_fake_cifar
    from ied.io import sha256_file
    config = yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text())
    (pretrained,) = config["pretrained"].values()
    pickle_file = tmp_path / pretrained["path"]
    pickle_file.parent.mkdir(parents=True)
    from ied.data import DATASETS
    from test_config import write_stand_in_network
    dataset = DATASETS[config["dataset"]["name"]]
    write_stand_in_network(pickle_file, img_channels=dataset.shape[0], img_resolution=dataset.shape[1],
                           label_dim=dataset.num_classes)  # the config check reads it
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"stand-in")
    override = {"evaluate": {"feature_extractor_weights_path": str(weights),
                             "feature_extractor_sha256": sha256_file(weights)}}
    if config["dataset"].get("data_root"):
        override["dataset"] = {"data_root": str(write_fake_cifar(tmp_path / "cifar").parent), "verify_checksums": False}
    else:
        refs = tmp_path / "refs.npz"
        np.savez(refs, mu=np.zeros(2048), sigma=np.eye(2048))
        override["evaluate"]["reference_statistics"] = str(refs)
    (tmp_path / "local.yaml").write_text(yaml.safe_dump(override))
    planned = job_counts("--configfile", REPO / "config" / f"{name}.yaml", tmp_path / "local.yaml", cwd=tmp_path)
    assert "train_segment" not in planned
    assert {k: planned.get(k) for k in counts} == counts
