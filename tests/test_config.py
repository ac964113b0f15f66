"""ied.config: checks that need files (data, weights) and the schema's defaults; every path is quoted in the rules."""
import subprocess
import sys

import numpy as np
import torch
import pytest
import yaml

from ied.checks import validate
from ied.config import ConfigError, read
from ied.io import sha256_file

from conftest import REPO, VENV_ENV, without_fitted
from test_data import write_fake_cifar, write_fake_imagenet32


def paper_config(tmp_path, name, data_root, **evaluate):
    """A paper config pointed at local stand-ins for the data and the Inception weights."""
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"stand-in weights")
    config = read([REPO / "config" / f"paper-{name}.yaml"])
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


def test_integral_floats_are_integers_and_ints_where_numbers_are_floats():
    """8.0 where an integer is meant is 8, 0 where a number is meant is 0.0: one value, one identity, no late
    TypeError (`base_channels: 8.0`), no traceback at parse (`total_steps: 1.0e+6`), no `n20.0-seed0` path."""
    from ied import layout, specs
    from ied.config import merge
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config = validate(raw)
    floats = validate(merge(raw, {
        "train": {"network": {"base_channels": 16.0, "dropout": 0}, "total_steps": 9.0e+2, "checkpoint_every": 300.0,
                  "batch_size": 64.0, "seed": 0.0, "lr": 1, "ema": 0.99},
        "sample": {"samplers": {"em": {"steps": 50.0}}, "single": {"n_samples": 360.0},
                   "repeated": {"sets": 2.0, "up_to": 600.0}},
        "nfe_sweep": {"nfe": {"default": [5.0, 10, 20.0], "heun": [5.0, 9.0, 19]}}, "nll": {"n_images": 64.0},
        "rationales": {"ve": {"sigma_max": 80.0}, "edm7": {"rho": 7.0}}, "ablation": {"sigma_n": [1.0, 3, 5, 10.0]}}))
    config["train"]["lr"] = 1.0
    network = floats["train"]["network"]
    assert type(network["base_channels"]) is int and type(network["dropout"]) is float
    assert type(floats["train"]["total_steps"]) is int and type(floats["sample"]["repeated"]["sets"]) is int
    assert type(floats["train"]["lr"]) is float and floats["train"]["lr"] == 1.0
    assert layout.cells(floats) == layout.cells(config)
    assert all(type(c.n) is int for c in layout.cells(floats))
    for name in config["train"]["rationales"]:
        assert specs.identity_hash(specs.training_spec(floats, name)) == \
            specs.identity_hash(specs.training_spec(config, name)), name
    for sampler in ("em", "heun"):
        assert specs.sampling_spec(floats, "edm7", sampler) == specs.sampling_spec(config, "edm7", sampler)
    assert specs.all_rationales(floats) == specs.all_rationales(config)


def test_a_yaml_alias_bomb_is_refused_without_expanding_it(tmp_path):
    """Nine levels of nine aliases: 9⁹ values if expanded. Counting each node once refuses it at once."""
    from ied.config import read_yaml
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\nexperiment: x\n")
    with pytest.raises(ConfigError, match=r"bomb.yaml: expands to more than 100000 values through YAML aliases"):
        read_yaml(bomb)
    small = tmp_path / "aliases.yaml"
    small.write_text("net: &net {base_channels: 16}\ntrain: {network: *net}\n")
    assert read_yaml(small)["train"]["network"] == {"base_channels": 16}


def test_nll_exact_traces_are_refused_on_32x32_images(tmp_path):
    config = paper_config(tmp_path, "cifar10", write_fake_cifar(tmp_path / "c").parent)
    config["nll"].update(estimator="exact", n_images=2)
    with pytest.raises(ConfigError, match=r"config key 'nll.estimator': .*3072 for cifar10 \(the limit is 256\)"):
        validate(config)


def write_stand_in_network(path, **shape):
    """A tiny EDM network pickle (tests/edm_pickle.py) of the given image shape and classes: what the config check
    reads of a published network."""
    import edm_pickle
    from conftest import TINY_EDM
    from ied.networks import EDMPrecond
    kwargs = {**TINY_EDM, "augment_dim": 0, **shape}
    torch.manual_seed(0)
    edm_pickle.write(path, EDMPrecond(**kwargs).eval(), kwargs)


def statistics_config(tmp_path, **changes):
    """config/edm-pretrained-ffhq-64.yaml on local stand-ins: a network file, weights and reference statistics."""
    config = read([REPO / "config" / "edm-pretrained-ffhq-64.yaml"])
    network = tmp_path / "net.pkl"
    write_stand_in_network(network, img_resolution=64, img_channels=3, label_dim=0)
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"stand-in weights")
    np.savez(tmp_path / "refs.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    config["pretrained"]["edm-uncond-vp"]["path"] = str(network)
    config["evaluate"].update(feature_extractor_weights_path=str(weights), feature_extractor_sha256=sha256_file(weights),
                              reference_statistics=str(tmp_path / "refs.npz"))
    for key, value in changes.items():
        section, name = key.split(".")
        config.setdefault(section, {})[name] = value
    return config


def test_a_dataset_known_by_its_statistics(tmp_path):
    validate(statistics_config(tmp_path))
    config = statistics_config(tmp_path)
    np.savez(tmp_path / "refs.npz", mu=np.zeros(2048), sigma=np.eye(2048) * np.nan)
    with pytest.raises(ConfigError, match=r"config key 'evaluate.reference_statistics': .*refs.npz: mu or sigma holds "
                                          r"non-finite values"):
        validate(config)
    config = statistics_config(tmp_path)
    np.savez(tmp_path / "refs.npz", mu=np.zeros(128), sigma=np.eye(128))
    with pytest.raises(ConfigError, match=r"not the statistics of 2048-dimensional features"):
        validate(config)
    config = statistics_config(tmp_path, **{"evaluate.reference_statistics": None})
    with pytest.raises(ConfigError, match=r"config key 'evaluate.reference_statistics': ffhq64 has no images here"):
        validate(config)
    with pytest.raises(ConfigError, match=r"config key 'nll.n_images': the likelihood needs images of the dataset"):
        validate(statistics_config(tmp_path, **{"nll.n_images": 100}))
    trained = statistics_config(tmp_path)
    trained["train"] = {**yaml.safe_load((REPO / "config" / "config.yaml").read_text())["train"],
                        "rationales": ["ve", "l2", "gauss5"]}
    with pytest.raises(ConfigError, match=r"config key 'train.rationales': ffhq64 is known here only by its "
                                          r"reference statistics"):
        validate(trained)


def test_a_pretrained_file_is_checked_against_its_digest(tmp_path):
    config = statistics_config(tmp_path)
    config["pretrained"]["edm-uncond-vp"]["sha256"] = "0123abcd"
    with pytest.raises(ConfigError, match=r"config key 'pretrained.edm-uncond-vp.sha256': .*net.pkl: sha256 .* does "
                                          r"not start with 0123abcd"):
        validate(config)
    config["pretrained"]["edm-uncond-vp"]["sha256"] = sha256_file(tmp_path / "net.pkl")
    validate(config)
    validate({**config, "pretrained": {"edm-uncond-vp": {**config["pretrained"]["edm-uncond-vp"],
                                                          "sha256": "0123abcd"}}}, deep=False)  # jobs do not hash


def test_file_names_too_long_for_the_file_system_are_refused_naming_the_key():
    """Names within the schema's 64 characters can still make a cell's log name exceed 255 bytes through an
    ablation rationale's σ_N; the check names the key before any job."""
    from ied.config import merge
    long = "a" * 64
    raw = merge(without_fitted(yaml.safe_load((REPO / "config" / "config.yaml").read_text())), {
        "rationales": {long: {"family": "gaussian", "sigma_n": 5, "sigma_max": 15}},
        "train": {"rationales": [long], "total_steps": 20_000_000, "checkpoint_every": 10_000_000},
        "sample": {"samplers": {"s" * 64: {"sampler": "euler_maruyama", "steps": 10}},
                   "single": {"rationales": [long], "samplers": ["s" * 64], "n_samples": 360},
                   "repeated": {"rationales": [long], "samplers": ["s" * 64], "n_samples": 360, "up_to": None}},
        "nfe_sweep": {"steps": [], "nfe": []}, "nll": {"n_images": 2},
        "ablation": {"rationale": long, "train_rationale": long, "sampler": "s" * 64,
                     "sigma_n": [2.0000000000000004]}})
    del raw["sample"]["samplers"]["em"], raw["sample"]["samplers"]["heun"]
    with pytest.raises(ConfigError, match=r"config key 'ablation.sigma_n': the cell's log file name .* would be "
                                          r"2\d\d bytes, more than 240"):
        validate(raw)


def test_the_ablation_and_the_sweep_run_on_a_pretrained_model(tmp_path):
    from ied import layout
    config = statistics_config(tmp_path)
    config["ablation"] = {"rationale": "gauss5", "train_rationale": "edm-uncond-vp", "sampler": "heun",
                          "sigma_n": [1, 3]}
    config["nfe_sweep"] = {"rationales": ["edm7"], "samplers": ["heun"], "steps": [10, 20], "n_samples": 100,
                           "reference_images": 100}
    config = validate(config)
    assert {(c.train, c.step) for c in layout.ablation_cells(config) + layout.sweep_cells(config)} == {
        ("edm-uncond-vp", layout.PRETRAINED_STEP)}
    config["ablation"]["checkpoint"] = 100
    with pytest.raises(ConfigError, match="a pretrained model with one checkpoint; use last"):
        validate(config)
