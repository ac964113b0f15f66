"""`ied bench` runs and reports every section (the numbers themselves are not asserted: no timed tests)."""
import json

import pytest

from ied.bench import main, stage_times


def test_bench_reports_every_section(capsys):
    assert main(["--device", "cpu", "--train-batch", "4", "--train-steps", "1", "--sample-batch", "4",
                 "--sample-steps", "2", "--samplers", "euler_maruyama", "heun", "--feature-images", "16",
                 "--table-intervals", "2048", "--nll-batch", "2", "--only", "training", "sampling", "flops",
                 "schedules", "features", "nll"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["mode"] for r in report["training"]] == ["fp32"] and report["training"][0]["parameters"] == 164625
    sampling = report["sampling"][0]
    for name in ("euler_maruyama", "heun"):
        assert sampling[name]["nfe"] == {"euler_maruyama": 2, "heun": 3}[name]
        assert sampling[name]["overhead_in_run"] >= 1  # the denoiser's own time is part of the sampler's wall time
    assert set(sampling["per_image_noise"]) == {"seconds_per_draw", "fraction_of_a_step"}
    assert report["flops_per_forward_per_image"] > 1e5
    assert set(report["schedules"]) >= {"ve", "l2", "gauss5", "kl", "edm7", "expression"}
    assert all(entry["max_rel_error"] < 1e-6 for entry in report["schedules"].values())  # 2,048 intervals
    assert report["nll"]["nfe_per_image"] >= 6  # RK45: six evaluations per step at least
    assert set(report["peak_memory"]) == {"cpu_max_rss_mb"}


def test_stage_times_sum_snakemake_benchmark_files(tmp_path):
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for rule, name, seconds in [("train_segment", "ve-300", 10.5), ("train_segment", "ve-600", 9.5),
                                ("generate", "a", 2.0)]:
        path = tmp_path / "benchmarks" / rule / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + f"{seconds}\t0:00:10\t1\t1\t1\t1\t0\t0\t0\t1\n")
    stages = stage_times(str(tmp_path))
    assert stages == {"generate": {"jobs": 1, "job_seconds": 2.0},
                      "train_segment": {"jobs": 2, "job_seconds": 20.0}}


@pytest.mark.slow
def test_bench_presets_of_the_published_networks(capsys):
    """The EDM presets build the published architectures and sample through the same path as the pipeline."""
    assert main(["--device", "cpu", "--preset", "edm-cifar10-ddpmpp", "--sample-batch", "1", "--sample-steps", "2",
                 "--samplers", "heun", "--only", "sampling", "flops"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sampling"][0]["heun"]["nfe"] == 3 and report["flops_per_forward_per_image"] > 1e10


def test_startup_is_measured_per_job_kind_with_its_dominant_imports():
    """`ied bench --only startup`: every job kind, each with the imports that dominate it: the evaluation's are
    torch's, never torch-fidelity's or torchvision's; the tables' are pandas and never torch."""
    from ied.bench import JOB_IMPORTS, bench_startup
    report = bench_startup(repeats=1, top=8)
    assert set(report) == set(JOB_IMPORTS) == {"train", "generate", "evaluate", "nll", "tables", "figures"}
    assert "torch" in report["train"]["dominant_imports_s"] and "torch" in report["generate"]["dominant_imports_s"]
    assert "torch" in report["evaluate"]["dominant_imports_s"]
    assert not {"torch_fidelity", "torchvision"} & set(report["evaluate"]["dominant_imports_s"])
    assert "pandas" in report["tables"]["dominant_imports_s"] and "torch" not in report["tables"]["dominant_imports_s"]
