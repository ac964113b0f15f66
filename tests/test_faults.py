"""Issue 7: SIGKILLed jobs and corrupted files; rerunning the same command gives bit-identical results (CPU)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, VENV_ENV, assert_same_results, job_pids, small_pipeline_config


def command(workdir: Path, configfile: Path, *targets: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), *targets,
            "--cores", "1", "--configfile", str(configfile)]


def run(workdir: Path, configfile: Path, *targets: str) -> None:
    result = subprocess.run(command(workdir, configfile, *targets), cwd=workdir, env=VENV_ENV, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def run_and_kill(workdir: Path, configfile: Path, subcommand: str, ready) -> None:
    """Run the pipeline, SIGKILL the first `subcommand` job once ready(workdir) holds, expect failure."""
    proc = subprocess.Popen(command(workdir, configfile), cwd=workdir, env=VENV_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed, deadline = False, time.time() + 600
    while not killed and proc.poll() is None and time.time() < deadline:
        pids = job_pids(workdir, subcommand)
        if pids and ready(workdir):
            os.kill(pids[0], signal.SIGKILL)
            killed = True
        time.sleep(0.02)
    stderr = proc.communicate(timeout=600)[1]
    assert killed, f"no {subcommand} job was caught running"
    assert proc.returncode != 0, stderr[-2000:]


def exp(workdir: Path) -> Path:
    return workdir / "results" / "small"


def training_in_second_segment(workdir: Path) -> bool:
    log = exp(workdir) / "logs" / "train_segment" / "l2-60.jsonl"
    return log.exists() and '"loss"' in log.read_text()


def a_shard_is_done(workdir: Path) -> bool:
    return any(exp(workdir).glob("samples/**/*.parts/shard-*.npz"))


def running_for(seconds: float):
    """A ready() that holds once it has been asked for `seconds` (it is only asked while the job runs)."""
    first_asked: list[float] = []

    def ready(workdir: Path) -> bool:
        first_asked or first_asked.append(time.time())
        return time.time() - first_asked[0] > seconds

    return ready


def assert_rerun_names(workdir: Path, configfile: Path, message: str) -> None:
    """Rerun the pipeline (--keep-going); it must fail, and a job's log must carry `message`."""
    result = subprocess.run(command(workdir, configfile) + ["--keep-going"], cwd=workdir, env=VENV_ENV,
                            capture_output=True, text=True)
    assert result.returncode != 0
    logs = "".join(p.read_text() for p in (exp(workdir) / "logs").glob("*/*.log"))
    assert message in logs, result.stderr[-3000:]


@pytest.mark.slow
def test_killed_jobs_resume_bit_identically(tmp_path, small_reference):
    configfile = small_pipeline_config(tmp_path)
    faulty = tmp_path / "faulty"
    faulty.mkdir()

    run_and_kill(faulty, configfile, "train", training_in_second_segment)
    assert not (exp(faulty) / "checkpoints" / "l2" / "ckpt-60.pt").exists()
    run_and_kill(faulty, configfile, "generate", a_shard_is_done)
    assert any(exp(faulty).glob("samples/**/*.parts/shard-*.npz"))  # finished shards survive the kill
    run_and_kill(faulty, configfile, "evaluate", running_for(1.0))

    # Truncate a finished samples file, then change a checkpoint's bytes (still a valid zip: only the checksum
    # sees it). The run that reads each stops naming the file and moves it aside; the next one regenerates it.
    # One damage per run: a job that moves its input aside makes Snakemake stop the run even with --keep-going.
    samples = exp(faulty) / "samples" / "l2" / "30" / "l2" / "em" / "n40-seed0.npz"
    run(faulty, configfile, str(samples.relative_to(faulty)))  # make sure it is there to be damaged
    samples.write_bytes(samples.read_bytes()[:1000])
    assert_rerun_names(faulty, configfile, f"{samples.relative_to(faulty)}: unreadable or truncated")
    assert samples.with_name("n40-seed0.npz.corrupt").exists() and not samples.exists()

    ckpt = exp(faulty) / "checkpoints" / "l2" / "ckpt-60.pt"
    run(faulty, configfile, str(ckpt.relative_to(faulty)))
    state = torch.load(ckpt, weights_only=True)
    next(iter(state["ema"].values())).view(-1)[0] += 1.0
    torch.save(state, ckpt)
    assert_rerun_names(faulty, configfile, f"{ckpt.relative_to(faulty)}: checksum mismatch")
    assert ckpt.with_name("ckpt-60.pt.corrupt").exists() and not ckpt.exists()

    run(faulty, configfile)
    assert_same_results(small_reference, exp(faulty))
