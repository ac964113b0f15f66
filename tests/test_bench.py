"""`ied bench` runs and reports what issue 8 asks for (the numbers themselves are not asserted: no timed tests)."""
import json

from ied.bench import main, stage_times


def test_bench_prints_every_section(capsys):
    assert main(["--device", "cpu", "--train-batch", "4", "--train-steps", "1", "--sample-batch", "4",
                 "--sample-steps", "2", "--feature-images", "16", "--table-intervals", "2048"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["training"]["images_per_s"] > 0 and report["training"]["parameters"] > 0
    for name in ("euler_maruyama", "euler", "heun", "edm_stochastic", "s2n"):
        entry = report["sampling"][name]
        assert entry["nfe"] >= entry["steps"] and entry["overhead"] > 0
        assert entry["overhead_in_run"] >= 1  # the denoiser's own time is part of the sampler's wall time
    assert report["flops"]["flops_per_forward_per_image"] > 0
    assert set(report["schedules"]) >= {"ve", "l2", "gauss5", "kl", "edm7", "expression"}
    assert all(entry["max_rel_error"] < 1e-6 for entry in report["schedules"].values())
    assert report["features"]["ied-digits-cnn"]["images_per_s"] > 0
    assert report["peak_memory"]["cpu_max_rss_mb"] > 0


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
