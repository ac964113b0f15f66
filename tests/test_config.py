"""ied.config: checks that need files (data, weights) and the schema's defaults; every path is quoted in the rules."""
import subprocess
import sys

import numpy as np
import pytest
import yaml

from ied.config import ConfigError, load, validate
from ied.io import sha256_file

from conftest import REPO, VENV_ENV
from test_data import write_fake_cifar, write_fake_imagenet32


def paper_config(tmp_path, name, data_root, **evaluate):
    """A paper config pointed at local stand-ins for the data and the Inception weights."""
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"stand-in weights")
    config = load([REPO / "config" / f"paper-{name}.yaml"], check=False)
    config["dataset"].update(data_root=str(data_root), verify_checksums=False)
    config["evaluate"].update(feature_extractor_weights_path=str(weights),
                              feature_extractor_sha256=sha256_file(weights), **evaluate)
    return config


def test_stand_in_paper_configs_are_valid(tmp_path):
    validate(paper_config(tmp_path, "cifar10", write_fake_cifar(tmp_path / "c").parent))
    validate(paper_config(tmp_path, "imagenet32", write_fake_imagenet32(tmp_path / "i")))


def test_missing_or_malformed_data_is_named_before_any_job(tmp_path):
    folder = write_fake_cifar(tmp_path / "c")
    (folder / "data_batch_3").unlink()
    with pytest.raises(ConfigError, match=r"config key 'dataset.data_root': .*data_batch_3: CIFAR-10 batch not found"):
        validate(paper_config(tmp_path, "cifar10", folder.parent))
    root = write_fake_imagenet32(tmp_path / "i")
    np.savez(root / "train_data_batch_7.npz", data=np.zeros((2, 3072), np.float32), labels=np.ones(2))
    with pytest.raises(ConfigError, match=r"train_data_batch_7.npz: data is float32, expected uint8"):
        validate(paper_config(tmp_path, "imagenet32", root))


def test_weights_hash_is_checked_before_any_job(tmp_path):
    config = paper_config(tmp_path, "cifar10", write_fake_cifar(tmp_path / "c").parent)
    config["evaluate"]["feature_extractor_sha256"] = "6726825d"  # torch-fidelity's Inception, not the stand-in
    with pytest.raises(ConfigError, match=r"config key 'evaluate.feature_extractor_weights_path': .*weights.pth: "
                                          r"sha256 .* does not start with .*6726825d"):
        validate(config)
    validate(config, deep=False)  # a job re-entering the Snakefile on a cluster node does not hash again


def test_schema_defaults_fill_a_minimal_config():
    config = validate(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))
    assert config["train"]["network"]["sigma_data"] == 0.5 and config["evaluate"]["extractor"] == "auto"
    assert config["rationales"]["edm7"]["rho"] == 7 and config["rationales"]["l2"]["v_max"] == 1.0
    assert config["resources"] == {} and config["sample"]["device"] == "auto"


@pytest.mark.slow
def test_every_path_in_a_shell_command_is_quoted(tmp_path):
    """A data_root with a space and a shell command in its name: the prepare jobs read it as one path."""
    root = tmp_path / "my data; touch pwned; true"
    write_fake_cifar(root)
    config = paper_config(tmp_path, "cifar10", root)
    config["experiment"] = "quoting"
    configfile = tmp_path / "quoting.yaml"
    configfile.write_text(yaml.safe_dump(config, allow_unicode=True))
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    targets = [f"results/quoting/data/{split}.npz" for split in ("train", "test")]
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
                             "--cores", "1", *targets, "--configfile", str(configfile)], cwd=workdir, env=VENV_ENV,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert all((workdir / t).exists() for t in targets)
    assert not any(p.name == "pwned" for p in tmp_path.rglob("*")) and not (REPO / "pwned").exists()
