"""The experiment as data: config checks beyond the JSON schema, and the one cross-product of jobs."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from ied.data import NUM_CLASSES, REFERENCE_SPLIT
from ied.expressions import FormulaError, compile_formula
from ied.metrics import DIGITS_EXTRACTOR
from ied.rationales import RationaleError, build_all
from ied.samplers import SAMPLERS, sampler_options


class ConfigError(ValueError):
    """An invalid pipeline config; the message names the key."""


@dataclass(frozen=True)
class Cell:
    """One generate+evaluate job: a checkpoint sampled with one schedule and sampler for one seed set."""

    train: str
    step: int
    sample: str
    sampler: str
    seed_set: int


def ablation_rationales(config: Mapping[str, Any]) -> dict[str, dict]:
    """The N(0, σ_N²) sampling rationales of the Fig. 5 ablation, cut at 3σ_N (paper App. C.2)."""
    ablation = config.get("ablation") or {}
    lo = ablation.get("sigma_min", 0.002)
    return {f"gauss_sn{sn:g}": {"family": "gaussian", "sigma_n": sn, "sigma_min": lo, "sigma_max": 3 * sn,
                                "label": f"N(0,{sn:g}²)"} for sn in ablation.get("sigma_n", [])}


def all_rationales(config: Mapping[str, Any]) -> dict[str, dict]:
    """Configured rationales plus the ablation's."""
    return {**config["rationales"], **ablation_rationales(config)}


def checkpoint_steps(config: Mapping[str, Any]) -> list[int]:
    """Every checkpoint the training writes: multiples of checkpoint_every up to total_steps."""
    train = config["train"]
    every, total = train["checkpoint_every"], train["total_steps"]
    return list(range(every, total + 1, every))


def evaluated_steps(config: Mapping[str, Any]) -> list[int]:
    """The checkpoints that are sampled and scored."""
    wanted = config["sample"]["checkpoints"]
    return checkpoint_steps(config) if wanted == "all" else sorted(wanted)


def cells(config: Mapping[str, Any]) -> list[Cell]:
    """Training rationale × evaluated checkpoint × sampling rationale × sampler × seed set, plus the ablation."""
    sample = config["sample"]
    out = [Cell(t, step, s, sampler, k) for t in config["train"]["rationales"] for step in evaluated_steps(config)
           for s in sample["rationales"] for sampler in sample["samplers"] for k in range(sample["seed_sets"])]
    ablation = config.get("ablation") or {}
    if ablation.get("sigma_n"):
        step = ablation.get("checkpoint", "last")
        step = checkpoint_steps(config)[-1] if step == "last" else int(step)
        out += [Cell(ablation["train_rationale"], step, name, ablation["sampler"], 0)
                for name in ablation_rationales(config)]
    return list(dict.fromkeys(out))


def extractor(config: Mapping[str, Any]) -> str:
    """The feature extractor: the pipeline's digits CNN for digits, torch-fidelity's Inception otherwise."""
    chosen = config["evaluate"].get("extractor", "auto")
    if chosen == "auto":
        return DIGITS_EXTRACTOR if config["dataset"]["name"] == "digits" else "inception-v3-compat"
    return chosen


def train_config(config: Mapping[str, Any], rationale: str) -> dict:
    """Everything `ied train` needs for one training rationale (its hash guards checkpoints)."""
    train = config["train"]
    return {"dataset": config["dataset"]["name"], "rationale": all_rationales(config)[rationale],
            "network": train["network"], "batch_size": train["batch_size"], "lr": train["lr"], "ema": train["ema"],
            "grad_clip": train.get("grad_clip"), "seed": train["seed"], "weighting": train.get("weighting"),
            "log_every": train["log_every"], "device": train.get("device", "auto")}


def check(config: Mapping[str, Any]) -> None:
    """Semantic checks the JSON schema cannot express; raises ConfigError naming the key."""
    def fail(key: str, message: str):
        raise ConfigError(f"config key {key!r}: {message}")

    rationales = config["rationales"]
    overlap = set(rationales) & set(ablation_rationales(config))
    if overlap:
        fail("rationales", f"{sorted(overlap)} clash with the ablation's generated names")
    try:
        build_all(all_rationales(config))
    except RationaleError as err:
        fail(f"rationales.{err.rationale}.{err.key}", str(err))
    for section in ("train", "sample"):
        names = config[section]["rationales"]
        if len(set(names)) != len(names):
            fail(f"{section}.rationales", f"lists a rationale twice: {names}")
        for name in names:
            if name not in rationales:
                fail(f"{section}.rationales", f"{name!r} is not defined under rationales")
    for name, entry in config["sample"]["samplers"].items():
        if entry["sampler"] not in SAMPLERS:
            fail(f"sample.samplers.{name}.sampler", f"unknown sampler {entry['sampler']!r}; "
                                                    f"choose one of {sorted(SAMPLERS)}")
        allowed = sampler_options(entry["sampler"])
        for option in entry.get("options", {}):
            if option not in allowed:
                fail(f"sample.samplers.{name}.options.{option}",
                     f"not an option of {entry['sampler']} (allowed: {sorted(allowed)})")
    train = config["train"]
    if train["total_steps"] % train["checkpoint_every"]:
        fail("train.total_steps", f"must be a multiple of checkpoint_every ({train['checkpoint_every']})")
    wanted = config["sample"]["checkpoints"]
    if wanted != "all":
        for step in wanted:
            if step not in checkpoint_steps(config):
                fail("sample.checkpoints", f"step {step} is not a checkpoint (multiples of "
                                           f"{train['checkpoint_every']} up to {train['total_steps']})")
    if train.get("weighting"):
        try:
            compile_formula(train["weighting"])
        except FormulaError as err:
            fail("train.weighting", str(err))
    ablation = config.get("ablation") or {}
    if ablation.get("sigma_n"):
        if ablation.get("train_rationale") not in train["rationales"]:
            fail("ablation.train_rationale", f"{ablation.get('train_rationale')!r} is not a training rationale")
        if ablation.get("sampler") not in config["sample"]["samplers"]:
            fail("ablation.sampler", f"{ablation.get('sampler')!r} is not a configured sampler")
        step = ablation.get("checkpoint", "last")
        if step != "last" and step not in checkpoint_steps(config):
            fail("ablation.checkpoint", f"step {step} is not a checkpoint")
    dataset = config["dataset"]
    if dataset["name"] != "digits":
        root = dataset.get("data_root")
        if not root:
            fail("dataset.data_root", f"dataset {dataset['name']!r} needs a local data_root")
        if not dataset.get("download") and not Path(root).is_dir():
            fail("dataset.data_root", f"{root}: no such folder (set download: true on a machine with internet)")
    chosen = extractor(config)
    if chosen != DIGITS_EXTRACTOR:
        path = config["evaluate"].get("feature_extractor_weights_path")
        if not path:
            fail("evaluate.feature_extractor_weights_path", f"{chosen} needs a local weights file (never downloaded)")
        if not Path(path).is_file():
            fail("evaluate.feature_extractor_weights_path", f"{path}: no such file")
    elif dataset["name"] != "digits":
        fail("evaluate.extractor", "the digits CNN only scores the digits dataset")
    if config["sample"]["n_samples"] < 20:
        fail("sample.n_samples", "needs at least 20 samples for FID and KID")


def reference_split(config: Mapping[str, Any]) -> str:
    """The split FID is computed against (CIFAR-10 test, ImageNet-32 val, digits test)."""
    return REFERENCE_SPLIT[config["dataset"]["name"]]


def num_classes(config: Mapping[str, Any]) -> int:
    return NUM_CLASSES[config["dataset"]["name"]]


def dumps(obj: Any) -> str:
    """Compact JSON for command lines."""
    return json.dumps(asdict(obj) if isinstance(obj, Cell) else obj, sort_keys=True, separators=(",", ":"))
