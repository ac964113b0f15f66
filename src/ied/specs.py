"""The one translation point from config entries to job specs (as NVlabs/edm's options → kwargs).

Nothing else reads `rationales:` entries: validation, tabulation, training and generation all receive
what this module resolves — self-contained, label-free specs with every reference (a weighted
rationale's `base: <name>`) inlined. A job's identity is exactly such a spec, so a label, a log interval
or a batch size never changes it. Torch-free: the Snakefile imports it while it parses.
"""
from __future__ import annotations

import copy
import hashlib
import json
from typing import Any, Mapping

from ied.rationales import Rationale, RationaleError, build, check_keys
from ied.samplers import OptionError, identity_options

PRETRAINED_STEP = 0  # a pretrained model's one checkpoint: its published weights, nothing trained here


def identity_hash(obj: Any) -> str:
    """Short SHA-256 of a spec's canonical JSON: the identity checkpoints and sample shards carry."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _without_label(entry: Mapping[str, Any]) -> dict:
    """The entry without its label. Its numbers are already typed by the schema (ied.config.normalize, the one
    normaliser: 80 and 80.0 are one value there)."""
    return {key: copy.deepcopy(value) for key, value in entry.items() if key != "label"}


def resolve_rationale(name: str, entry: Mapping[str, Any], registry: Mapping[str, Mapping[str, Any]],
                      _seen: tuple[str, ...] = ()) -> dict:
    """A config entry (defaults filled by the schema) as a self-contained, label-free spec."""
    family = check_keys(name, entry, extra=("label",))
    spec = _without_label(entry)
    if family == "adaptive":
        return _resolve_adaptive(name, spec, registry, _seen)
    if family == "learned":
        return _resolve_learned(name, spec, registry, _seen)
    if family not in ("weighted", "fitted"):
        return spec
    spec["base"] = _reference(name, "base", entry.get("base"), registry, _seen)
    if family == "fitted":
        _own_domain_refused(name, spec, "a fitted rationale lives on its base's domain; give the base this domain")
        _fitted_options(name, spec)
    # A weighted rationale lives on its base's domain unless it names its own; a fitted one always does.
    spec.setdefault("sigma_min", spec["base"]["sigma_min"])
    spec.setdefault("sigma_max", spec["base"]["sigma_max"])
    return spec


def _fitted_options(name: str, spec: dict) -> None:
    """A fit's sampler options as a cell's identity holds them (absent when they are all the sampler's defaults and
    were added to it later, so fits made before those options existed keep their identity)."""
    if "sampler" not in spec:
        if "options" in spec:
            raise RationaleError(name, "options", "options of a sampler: give the sampler too (methods end_to_end "
                                                  "and trajectory_dp)")
        return
    try:
        options = identity_options(spec["sampler"], spec.get("options", {}))
    except OptionError as err:
        key = "sampler" if err.option == "sampler" else f"options.{err.option}"
        raise RationaleError(name, key, str(err)) from None
    spec.pop("options", None)
    if options:
        spec["options"] = options


def _reference(name: str, key: str, ref: Any, registry: Mapping[str, Mapping[str, Any]], seen: tuple[str, ...]) -> dict:
    """A rationale another one is built on (a `base`, a `target`): a defined name or an inline entry, resolved; one
    whose density exists only after a job or a training cannot be."""
    if isinstance(ref, str):
        if ref not in registry:
            raise RationaleError(name, key, f"no rationale named {ref!r} is defined")
        if ref in seen + (name,):
            raise RationaleError(name, key, f"circular reference through {ref!r}")
        out = resolve_rationale(ref, registry[ref], registry, seen + (name,))
    elif isinstance(ref, Mapping):
        out = resolve_rationale(f"{name}.{key}", ref, registry, seen + (name,))
    else:
        raise RationaleError(name, key, f"must be a rationale name or an inline entry, got {ref!r}")
    if out["family"] in ("fitted", "adaptive", "learned"):
        raise RationaleError(name, key, f"a {out['family']} rationale cannot be a {key} (its density exists only "
                                        f"after a fit or a training)")
    return out


def _own_domain_refused(name: str, spec: Mapping[str, Any], why: str) -> None:
    for key in ("sigma_min", "sigma_max"):
        if key in spec:
            raise RationaleError(name, key, why)


def _resolve_adaptive(name: str, spec: dict, registry: Mapping[str, Mapping[str, Any]], seen: tuple[str, ...]) -> dict:
    """An adaptive rationale: its target inlined, its domain the target's."""
    _own_domain_refused(name, spec, "an adaptive rationale lives on its target's domain; give the target this domain")
    spec["target"] = _reference(name, "target", spec.get("target"), registry, seen)
    if int(spec["bins"]) < 2:
        raise RationaleError(name, "bins", f"needs at least 2 bins, got {spec['bins']}")
    if not 0 < float(spec["ema"]) < 1:
        raise RationaleError(name, "ema", f"the loss EMA's decay must lie in (0, 1), got {spec['ema']}")
    spec["bins"], spec["ema"] = int(spec["bins"]), float(spec["ema"])
    return {**spec, "sigma_min": spec["target"]["sigma_min"], "sigma_max": spec["target"]["sigma_max"]}


def _resolve_learned(name: str, spec: dict, registry: Mapping[str, Mapping[str, Any]], seen: tuple[str, ...]) -> dict:
    """A learned rationale: an adaptive model's density at a checkpoint, the model's adaptive spec inlined, its
    domain the model's."""
    _own_domain_refused(name, spec, "a learned rationale lives on its model's domain")
    if "adaptive" in spec:
        raise RationaleError(name, "adaptive", "is set from the model; name the model only")
    model = spec.get("model")
    if model not in registry or registry[model].get("family") != "adaptive":
        raise RationaleError(name, "model", f"{model!r} is not an adaptive rationale (family adaptive) defined here")
    if model in seen:
        raise RationaleError(name, "model", f"circular reference through {model!r}")
    adaptive = resolve_rationale(model, registry[model], registry, seen + (name,))
    return {**spec, "adaptive": adaptive, "sigma_min": adaptive["sigma_min"], "sigma_max": adaptive["sigma_max"]}


SEED_SEPARATOR = ".seed"  # a training rationale's model of seed s > 0 is `<rationale>.seed<s>`; of seed 0, the name


def training_seeds(config: Mapping[str, Any], rationale: str) -> list[int]:
    """The seeds a training rationale is trained with: `train.seeds` if a list, else `train.seeds.<rationale>` or
    `train.seeds.default`."""
    seeds = config["train"]["seeds"]
    if isinstance(seeds, Mapping):
        seeds = seeds.get(rationale, seeds.get("default", [0]))
    return [int(seed) for seed in seeds]


def seed_model(rationale: str, seed: int) -> str:
    """The model of a training rationale and seed (seed 0 keeps the rationale's name, so runs before seeds rerun
    nothing)."""
    return rationale if seed == 0 else f"{rationale}{SEED_SEPARATOR}{seed}"


def trained(config: Mapping[str, Any]) -> dict[str, tuple[str, int]]:
    """Every trained model, in the config's order (rationales, then seeds): its training rationale and seed."""
    return {seed_model(name, seed): (name, seed) for name in config["train"]["rationales"]
            for seed in training_seeds(config, name)}


def is_trained(config: Mapping[str, Any], model: str) -> bool:
    """Whether `model` is trained here (not a published network's)."""
    return model in trained(config)


def checkpoint_step(config: Mapping[str, Any], model: str, step: int | str) -> int:
    """A model's checkpoint `step` as a number: `last` is the training's last checkpoint, or a pretrained model's
    one (PRETRAINED_STEP)."""
    if step != "last":
        return int(step)
    return int(config["train"]["total_steps"]) if is_trained(config, model) else PRETRAINED_STEP


def configured_rationales(config: Mapping[str, Any]) -> dict[str, dict]:
    """Every entry of `rationales:`, resolved; a fitted one's checkpoint by its number (`last` and 900 are one
    identity)."""
    registry = config["rationales"]
    out = {name: resolve_rationale(name, entry, registry) for name, entry in registry.items()}
    for spec in out.values():
        if spec["family"] in ("fitted", "learned"):
            spec["step"] = checkpoint_step(config, spec["model"], spec["step"])
    return out


def fitted_rationales(config: Mapping[str, Any]) -> dict[str, dict]:
    """The rationales fitted to a model (family `fitted`), resolved: each is made by a `fit_rationale` job."""
    return {name: spec for name, spec in configured_rationales(config).items() if spec["family"] == "fitted"}


def teacher_spec(spec: Mapping[str, Any]) -> dict:
    """What determines a fit's teacher trajectory besides the model's checkpoint: the base and the pilot."""
    return {"base": copy.deepcopy(dict(spec["base"])), "pilot": int(spec["pilot"])}


def teacher_key(spec: Mapping[str, Any]) -> str:
    """A fit's teacher file name: its pilot and the identity of its base (fits of one model, checkpoint, base and
    pilot share it)."""
    return f"p{int(spec['pilot'])}-{identity_hash(teacher_spec(spec)['base'])}"


def reference_spec(config: Mapping[str, Any], rationale_spec: Mapping[str, Any], n_samples: int,
                   seed_set: int) -> dict:
    """What determines a probability-flow reference besides the checkpoint: the domain, the images (the first
    `nfe_sweep.reference_images` of a set of n), the seed set and the solver's steps."""
    sweep = config["nfe_sweep"]
    return {"sigma_min": float(rationale_spec["sigma_min"]), "sigma_max": float(rationale_spec["sigma_max"]),
            "images": int(sweep["reference_images"]), "steps": int(sweep["reference_steps"]),
            "n_samples": int(n_samples), "seed_set": int(seed_set)}


def learned_rationales(config: Mapping[str, Any]) -> dict[str, dict]:
    """Adaptive models' densities at a checkpoint (family `learned`), resolved: each is read from that training
    segment's density table by a `learned_rationale` job."""
    return {name: spec for name, spec in configured_rationales(config).items() if spec["family"] == "learned"}


def adaptive_models(config: Mapping[str, Any]) -> list[str]:
    """The trained models whose training rationale is adaptive (their segments also write the learned density)."""
    registry = config["rationales"]
    return [model for model, (name, _) in trained(config).items() if registry[name].get("family") == "adaptive"]


def ablation_rationales(config: Mapping[str, Any]) -> dict[str, dict]:
    """Fig. 5's N(0, σ_N²) rationales: the ablation's base rationale with σ_N changed, cut at the same multiple.

    A σ_N whose rationale equals a configured one (the main grid's N(0, 5²)) takes that rationale's name,
    so its cell is the main grid's cell: generated once, the same number in the table and the figure.
    """
    ablation = config.get("ablation") or {}
    if not ablation.get("sigma_n"):
        return {}
    configured = configured_rationales(config)
    base = configured[ablation["rationale"]]
    cut = base["sigma_max"] / base["sigma_n"]
    out = {}
    for sigma_n in ablation["sigma_n"]:
        spec = {**base, "sigma_n": float(sigma_n), "sigma_max": cut * float(sigma_n)}
        same = [name for name, other in configured.items() if other == spec]
        out[same[0] if same else f"{ablation['rationale']}-sn{short_number(sigma_n)}"] = spec
    return out


def short_number(x: float) -> str:
    """The shortest text that reads back as the float `x`, without a trailing '.0' or an exponent's '+' (10 → '10',
    2.0000001 → '2.0000001', 1e+16 → '1e16'): distinct numbers get distinct names."""
    text = repr(float(x)).replace("+", "")
    return text.removesuffix(".0")


def all_rationales(config: Mapping[str, Any]) -> dict[str, dict]:
    """Configured rationales plus the ablation's, resolved."""
    return {**configured_rationales(config), **ablation_rationales(config)}


def labels(config: Mapping[str, Any]) -> dict[str, str]:
    """Display names for tables and figures: `label`, else the name; N(0,σ_N²) for the ablation; a pretrained
    model's label (it may share a name with a rationale only when that rationale is not trained)."""
    out = {name: entry.get("label", name) for name, entry in config["rationales"].items()}
    out.update({model: f"{out[name]} (seed {seed})" for model, (name, seed) in trained(config).items() if seed})
    out.update({name: entry.get("label", name) for name, entry in (config.get("pretrained") or {}).items()})
    for name, spec in ablation_rationales(config).items():
        out.setdefault(name, f"N(0,{short_number(spec['sigma_n'])}²)")
    return out


def rationale(spec: Mapping[str, Any], name: str = "r") -> Rationale:
    """A Rationale from a config-style entry (defaults from the schema filled in) — for scripts and tests."""
    from ied.config import fill_defaults

    return build(name, resolve_rationale(name, fill_defaults("rationale", spec), {}))


def network(entry: Mapping[str, Any]) -> dict:
    """A `train.network` entry with the schema's defaults (the paper's U-Net) filled in."""
    from ied.config import fill_defaults

    return fill_defaults("network", entry)


def training_spec(config: Mapping[str, Any], model: str) -> dict:
    """Everything that determines a trained model's weights, and nothing else (no label, log interval, device or
    thread count): the checkpoints' config hash is its identity_hash. Its seed is `train.seed` plus the model's."""
    train = config["train"]
    name, seed = trained(config).get(model, (model, 0))
    return {"dataset": config["dataset"]["name"], "rationale": all_rationales(config)[name],
            "network": copy.deepcopy(train["network"]), "batch_size": int(train["batch_size"]),
            "lr": float(train["lr"]), "ema": float(train["ema"]),
            "grad_clip": None if train["grad_clip"] is None else float(train["grad_clip"]),
            "seed": int(train["seed"]) + seed, "weighting": train["weighting"]}


def pretrained_identity(sha256: str) -> dict:
    """What determines a pretrained model's checkpoint: the format and the content of its file (not its path)."""
    return {"format": "edm", "sha256": sha256}


def pretrained_spec(config: Mapping[str, Any], name: str) -> dict:
    """A `pretrained:` entry's identity; the file is hashed (once per process)."""
    from ied.io import content_sha256
    return pretrained_identity(content_sha256(config["pretrained"][name]["path"]))


def model_hash(config: Mapping[str, Any], model: str) -> str:
    """The config hash a model's checkpoints carry: of its training spec, or of its pretrained file."""
    if is_trained(config, model):
        return identity_hash(training_spec(config, model))
    return identity_hash(pretrained_spec(config, model))


def sampler_entry(config: Mapping[str, Any], name: str) -> dict:
    """A configured sampler, or an NFE-sweep point `<sampler>-<steps>` (that sampler with other steps)."""
    samplers = config["sample"]["samplers"]
    if name in samplers:
        return samplers[name]
    base, _, steps = name.rpartition("-")
    if base in samplers and steps.isdigit():
        return {**samplers[base], "steps": int(steps)}
    raise KeyError(f"no sampler named {name!r}")


def sampling_spec(config: Mapping[str, Any], rationale_name: str, sampler_name: str) -> dict:
    """Everything that determines a generated image besides the checkpoint and its index: schedule, sampler,
    steps and every option (defaults included, so `{}` and the defaults spelled out are one identity; an option
    added to a sampler later only away from its default, so finished cells keep theirs)."""
    entry = sampler_entry(config, sampler_name)
    return {"rationale": all_rationales(config)[rationale_name], "sampler": entry["sampler"],
            "steps": int(entry["steps"]), "options": identity_options(entry["sampler"], entry.get("options", {}))}


def sampling_rationale(spec: Mapping[str, Any], table: Any = None) -> tuple[Rationale, dict]:
    """The sampling rationale of a resolved spec: built from it, or a fitted or learned one read from the table its
    job wrote (whose content digest is returned, for the identity of what is sampled with it)."""
    from ied.rationales import TABLED

    if spec["family"] not in TABLED:
        return build("sampling rationale", spec), {}
    if not table:
        raise RationaleError("sampling rationale", "family", f"a {spec['family']} sampling rationale needs its table "
                                                            f"(--rationale-table)")
    from ied.adaptive import load_learned
    from ied.fitting import load_fitted
    from ied.io import content_sha256

    load = load_fitted if spec["family"] == "fitted" else load_learned
    return load(table, spec), {"rationale_table_sha256": content_sha256(table)}
