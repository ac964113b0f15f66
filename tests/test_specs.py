"""ied.specs: config entries → self-contained, label-free job specs; a job's identity is its spec."""
import copy
import json

import yaml

from ied import specs
from ied.cli import main
from ied.checks import validate

from conftest import DEFAULT, without_fitted


def default():
    return yaml.safe_load(DEFAULT.read_text())


def test_identity_ignores_labels_and_run_time_settings():
    config = validate(default())
    edited = default()
    edited["rationales"]["l2"]["label"] = "another label"
    edited["train"].update(log_every=7, device="cpu", precision="fp32", compile=True)
    edited["sample"].update(batch_size=3, shard_size=2)
    edited = validate(edited)
    for name in config["train"]["rationales"]:
        assert specs.training_spec(config, name) == specs.training_spec(edited, name)
    for sample in config["sample"]["repeated"]["rationales"]:
        assert specs.sampling_spec(config, sample, "em") == specs.sampling_spec(edited, sample, "em")
    assert specs.labels(edited)["l2"] == "another label"
    assert "label" not in json.dumps(specs.all_rationales(edited))


def test_identity_follows_what_determines_the_output():
    config = validate(default())
    for key, value in [("lr", 0.002), ("ema", 0.9), ("seed", 1), ("batch_size", 32), ("weighting", "sigma")]:
        edited = copy.deepcopy(config)
        edited["train"][key] = value
        assert specs.training_spec(validate(edited), "ve") != specs.training_spec(config, "ve"), key
    edited = copy.deepcopy(config)
    edited["rationales"]["ve"]["sigma_max"] = 81
    assert specs.training_spec(validate(edited), "ve") != specs.training_spec(config, "ve")
    # numbers are canonical: 80 and 80.0 are one identity
    edited["rationales"]["ve"]["sigma_max"] = 80
    assert specs.identity_hash(specs.training_spec(validate(edited), "ve")) == \
        specs.identity_hash(specs.training_spec(config, "ve"))
    edited["sample"]["samplers"]["heun"]["options"] = {}
    assert specs.sampling_spec(validate(edited), "ve", "heun") == specs.sampling_spec(config, "ve", "heun")


def test_ablation_shares_the_main_grids_rationale():
    config = validate(default())
    ablation = specs.ablation_rationales(config)
    assert ablation["gauss5"] == specs.configured_rationales(config)["gauss5"]  # σ_N = 5 is the grid's cell
    assert ablation["gauss5-sn10"] == {**specs.configured_rationales(config)["gauss5"], "sigma_n": 10.0,
                                       "sigma_max": 30.0}


def test_weighted_rationale_with_a_named_base_trains_and_samples_through_the_job_path(digits, tmp_path):
    raw = without_fitted(default())
    raw["rationales"]["w"] = {"family": "weighted", "base": "l2", "weight": "sigma**2 / (sigma**2 + 0.25)",
                              "label": "weighted L2"}
    raw["train"].update(rationales=["w"], batch_size=16)
    raw["sample"]["single"]["rationales"] = raw["sample"]["repeated"]["rationales"] = ["w"]
    raw["ablation"]["sigma_n"], raw["nfe_sweep"]["steps"], raw["nfe_sweep"]["nfe"] = [], [], []
    config = validate(raw)
    spec = specs.training_spec(config, "w")
    assert spec["rationale"]["base"]["family"] == "l2"  # the reference is inlined: the job needs no registry
    ckpt = tmp_path / "ckpt-2.pt"
    assert main(["train", "--spec", json.dumps(spec), "--data", str(digits / "train.npz"), "--from-step", "0",
                 "--to-step", "2", "--out", str(ckpt)]) == 0
    sampling = json.dumps(specs.sampling_spec(config, "w", "heun"))
    assert main(["generate", "--checkpoint", str(ckpt), "--spec", sampling, "--n-samples", "4", "--expect-step", "2",
                 "--expect-config-hash", specs.identity_hash(spec), "--out", str(tmp_path / "s.npz")]) == 0
    assert (tmp_path / "s.npz").exists()


def test_close_sigma_n_values_keep_their_own_names():
    """Names are the shortest text that reads back as the number: 2.0000001 and 2.0000002 are two cells."""
    raw = default()
    raw["ablation"]["sigma_n"] = [2.0000001, 2.0000002, 10, 0.5]
    names = list(specs.ablation_rationales(validate(raw)))
    assert names == ["gauss5-sn2.0000001", "gauss5-sn2.0000002", "gauss5-sn10", "gauss5-sn0.5"]
    assert specs.short_number(1e-05) == "1e-05"
    assert specs.short_number(1e16) == "1e16" and specs.short_number(5.0) == "5"


def test_each_training_rationale_and_seed_is_a_model_and_seed_0_keeps_its_identity():
    """`train.seeds`: seed 0 keeps the rationale's name and training spec (a finished run reruns nothing); seed s is
    `<rationale>.seed<s>`, trained with train.seed + s; a rationale listed in a protocol stands for all its seeds."""
    from ied import layout
    from ied.checks import load
    from ied.config import merge
    from ied.checks import validate
    from conftest import DEFAULT
    before = load([DEFAULT])
    after = validate(merge(before, {"train": {"seeds": {"default": [0], "l2": [0, 1, 2]}}}), deep=False)
    assert specs.model_hash(before, "l2") == specs.model_hash(after, "l2")
    assert layout.trained_models(after) == ["ve", "l2", "l2.seed1", "l2.seed2", "gauss5", "adaptive-l2"]
    assert specs.training_spec(after, "l2.seed2")["seed"] == 2 and specs.training_spec(after, "ve")["seed"] == 0
    assert specs.training_spec(after, "l2.seed2")["rationale"] == specs.training_spec(after, "l2")["rationale"]
    assert specs.model_hash(after, "l2.seed1") != specs.model_hash(after, "l2")
    assert layout.sweep_models(after) == ["l2", "l2.seed1", "l2.seed2"]
    assert layout.protocol_models(after, "repeated") == ["ve", "l2", "l2.seed1", "l2.seed2", "gauss5"]
    assert specs.labels(after)["l2.seed1"] == "L2 (seed 1)"
    shifted = validate(merge(before, {"train": {"seed": 5, "seeds": [0, 3]}}), deep=False)
    assert specs.training_spec(shifted, "ve.seed3")["seed"] == 8
