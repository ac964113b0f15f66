"""Issue 6: the pipeline through a real one-node SLURM cluster (tests/slurm/up.sh): every job goes via sbatch.

`snakemake --profile slurm` (the repository's profile) plus tests/slurm/ci (partition, no account, no GPU,
squeue status checks) runs the reduced embedded default. On the way a training job is `scancel`led
mid-segment and a generation job fails once (its process is killed); both are resubmitted by `retries`
and the results equal a local run's bit for bit.
"""
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import REPO, VENV_ENV, assert_same_results, job_pids, small_pipeline_config

pytestmark = pytest.mark.slow
SLURM_DIR = Path(os.environ.get("IED_SLURM_DIR", "/tmp/ied-slurm"))
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]


def _alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text()), 0)
        return True
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="module")
def cluster():
    """Environment pointing at a running one-node cluster; stopped afterwards only if this test started it."""
    env = {**VENV_ENV, "IED_SLURM_DIR": str(SLURM_DIR), "SLURM_CONF": str(SLURM_DIR / "slurm.conf")}
    was_up = _alive(SLURM_DIR / "slurmctld.pid")
    up = subprocess.run(["bash", str(REPO / "tests" / "slurm" / "up.sh")], env=env, capture_output=True,
                        text=True, timeout=1200)
    if up.returncode != 0 and shutil.which("slurmctld") is None:
        pytest.skip(f"SLURM is not installed and could not be installed: {up.stderr[-1500:]}")
    assert up.returncode == 0, up.stderr[-3000:]
    yield env
    if not was_up:
        subprocess.run(["bash", str(REPO / "tests" / "slurm" / "down.sh")], env=env, capture_output=True)


def running_job(env: dict, comment_prefix: str) -> str | None:
    """SLURM id of a running job whose comment (set by the executor plugin) starts with comment_prefix."""
    out = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i %k"], env=env, capture_output=True, text=True).stdout
    for line in out.splitlines():
        job_id, _, comment = line.partition(" ")
        if comment.startswith(comment_prefix):
            return job_id
    return None


def job_states(workdir: Path) -> Counter:
    """Final states of the SLURM jobs that ran in workdir, from the cluster's job completion log."""
    states = Counter()
    for line in (SLURM_DIR / "log" / "jobcomp.log").read_text().splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if fields.get("WorkDir") == str(workdir):
            states[fields["JobState"]] += 1
    return states


def test_pipeline_through_slurm_with_retry_and_scancel(cluster, tmp_path, small_reference):
    configfile = small_pipeline_config(tmp_path)
    cluster_dir = tmp_path / "cluster"
    cluster_dir.mkdir()
    exp = cluster_dir / "results" / "small"
    proc = subprocess.Popen([*SNAKEMAKE, "-d", str(cluster_dir), "--profile", str(REPO / "slurm"),
                             "--profile", str(REPO / "tests" / "slurm" / "ci"), "--configfile", str(configfile)],
                            cwd=cluster_dir, env=cluster, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cancelled = failed = None
    deadline = time.time() + 1500
    while proc.poll() is None and time.time() < deadline and not (cancelled and failed):
        log = exp / "logs" / "train_segment" / "l2-60.jsonl"
        if not cancelled and log.exists() and '"loss"' in log.read_text():
            cancelled = running_job(cluster, "rule_train_segment_wildcards_l2_60")
            if cancelled:
                first_checkpoint = (exp / "checkpoints" / "l2" / "ckpt-30.pt").stat().st_mtime_ns
                subprocess.run(["scancel", cancelled], env=cluster, check=True)
        if not failed and any(exp.glob("samples/**/*.parts/shard-*.npz")):
            pids = job_pids(cluster_dir, "generate")
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                failed = pids[0]
        time.sleep(0.05)
    output = proc.communicate(timeout=max(60, deadline - time.time()))[0]
    assert cancelled and failed, f"the faults were not injected (scancel: {cancelled}, kill: {failed})\n{output[-3000:]}"
    assert proc.returncode == 0, output[-5000:]

    states = job_states(cluster_dir)
    assert states["CANCELLED"] == 1 and states["FAILED"] == 1, states
    assert states["COMPLETED"] == len(list(exp.glob("benchmarks/*/*.tsv"))), states  # every job ran under sbatch
    # the scancelled segment resumed from the previous checkpoint rather than from scratch
    assert (exp / "checkpoints" / "l2" / "ckpt-30.pt").stat().st_mtime_ns == first_checkpoint
    assert_same_results(small_reference, exp)
