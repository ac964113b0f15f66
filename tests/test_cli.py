"""`python -m ied`: a known failure is one line on stderr naming the file, exit status 1, no traceback."""
import json
import subprocess
import sys

import pytest

from conftest import REPO, VENV_ENV, sampling_spec, tiny_spec


def ied(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ied", *map(str, args)], cwd=cwd, env=VENV_ENV, capture_output=True,
                          text=True, timeout=300)


def assert_one_line(result, fragment):
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("case", ["missing checkpoint", "missing data", "cuda absent", "not a checkpoint"])
def test_known_failures_are_one_line(tmp_path, case, digits):
    spec = json.dumps(sampling_spec(steps=2))
    if case == "missing checkpoint":
        result = ied("generate", "--checkpoint", tmp_path / "ckpt-5.pt", "--spec", spec, "--n-samples", 2,
                     "--out", tmp_path / "s.npz", cwd=tmp_path)
        assert_one_line(result, "ckpt-5.pt: checkpoint not found")
    elif case == "missing data":
        result = ied("train", "--spec", json.dumps(tiny_spec()), "--data", tmp_path / "train.npz", "--from-step", 0,
                     "--to-step", 1, "--out", tmp_path / "c.pt", cwd=tmp_path)
        assert_one_line(result, "train.npz: prepared dataset not found")
    elif case == "cuda absent":
        import torch
        device, fragment = ("cuda:99", "only") if torch.cuda.is_available() else \
            ("cuda", "device 'cuda' was asked for, but this machine has no CUDA device")
        result = ied("train", "--spec", json.dumps(tiny_spec()), "--data", digits / "train.npz", "--from-step", 0,
                     "--to-step", 1, "--out", tmp_path / "c.pt", "--device", device, cwd=tmp_path)
        assert_one_line(result, fragment)
    else:
        (tmp_path / "ckpt-5.pt").write_bytes(b"not a checkpoint")
        result = ied("generate", "--checkpoint", tmp_path / "ckpt-5.pt", "--spec", spec, "--n-samples", 2,
                     "--out", tmp_path / "s.npz", cwd=tmp_path)
        assert_one_line(result, "ckpt-5.pt: unreadable or truncated checkpoint")
        assert (tmp_path / "ckpt-5.pt.corrupt").exists()  # moved aside so a rerun regenerates it
    assert not (tmp_path / "s.npz").exists() and not (tmp_path / "c.pt").exists()


def test_check_config_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "config" / "config.yaml").read_text().replace("ema: 0.99", "ema: 1.0"))
    result = ied("check-config", bad, cwd=tmp_path)
    assert result.returncode != 0 and "train.ema" in result.stderr and "Traceback" not in result.stderr


def test_an_output_folder_that_cannot_be_written_is_one_line(tmp_path):
    """A read-only folder (or one the job may not write) is named in one line, like a full disk."""
    import os
    from pathlib import Path
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root writes anyway: /sys refuses even root
        folder = Path("/sys/ied-cli-test")
    spec = json.dumps({"family": "ve", "sigma_min": 0.002, "sigma_max": 80.0})
    result = ied("tabulate", "--spec", spec, "--name", "ve", "--out", folder / "ve.parquet", cwd=tmp_path)
    assert_one_line(result, str(folder))
    assert any(why in result.stderr for why in ("Permission denied", "Operation not permitted", "Read-only"))


def test_the_config_hash_message_names_no_missing_flag(tmp_path, digits):
    """A checkpoint of another training spec is refused with what to do, not a flag `ied nll` does not have."""
    from ied.train import train
    train(tiny_spec(), 0, 1, data_path=digits / "train.npz", checkpoint_in=None, checkpoint_out=tmp_path / "c.pt")
    result = ied("nll", "--checkpoint", tmp_path / "c.pt", "--data", digits / "test.npz", "--n-images", 2,
                 "--expect-config-hash", "0123456789abcdef", "--out", tmp_path / "n.parquet", cwd=tmp_path)
    assert_one_line(result, "written by a different training config")
    assert "allow_config_change" not in result.stderr and "delete it and rerun the pipeline" in result.stderr
