"""Every check of a pipeline config before any job: what the schema cannot express (names, steps, protocols,
numerics of every schedule and weighting, labels, file names, GPUs), and the files the config names (data,
weights, network files, reference statistics, throughput). One message names the key. `load` is the one entry:
the Snakefile, `ied check-config` and `ied cost` call it. Torch-free unless the config names a network file.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ied import latex, layout, specs
from ied.config import (ConfigError, check_resources, extractor, fail, normalize, read,  # noqa: F401 (re-exported)
                        read_yaml)
from ied.cost import CostError, read_throughput
from ied.data import DATASETS, FID_FEATURES, DataError, check_upstream, read_fid_statistics
from ied.expressions import FormulaError, compile_formula
from ied.fitting import FINE_LEVELS, GRID_METHODS, fine_levels
from ied.io import content_sha256
from ied.nll import EXACT_MAX_DIMS
from ied.pretrained import FORMATS, PretrainedError, inspect as inspect_network
from ied.rationales import RationaleError, build, check_numerics
from ied.samplers import (OptionError, ScheduleError, nfe, resolve_options, sampled_levels,
                          steps_for_nfe)

MIN_SAMPLES = 20  # FID needs a covariance, KID two subsets
MAX_CHECKPOINTS = 10_000  # one training job per checkpoint: more is a typo, and a bill
WORKFLOW = Path(__file__).resolve().parents[2] / "workflow"


def workflow_rules() -> list[str]:
    """The workflow's rule names (the allowed keys of `resources:`), read from workflow/rules/*.smk."""
    text = "".join(p.read_text() for p in sorted((WORKFLOW / "rules").glob("*.smk")))
    return sorted(set(re.findall(r"^rule (\w+):", text, re.M)) | {"all"})


def load(configfiles: Iterable[str | Path], overrides: Iterable[str] = (), *, deep: bool = True) -> dict:
    """The config Snakemake would run, every check passed: the files (config/config.yaml if none) merged in
    order, then the `--config key=value` overrides. `deep`: also open the files it names (the Snakefile skips
    this in jobs re-entering it on a cluster node)."""
    return validate(read(configfiles, overrides), deep=deep)


def validate(config: Mapping[str, Any], *, deep: bool = True) -> dict:
    """Schema-check with defaults filled in, then every semantic and numerical check; ConfigError names the key.

    `deep`: also open the files the config names (data, network files, reference statistics) and hash the
    Inception weights."""
    given_nll = dict(config).get("nll")
    config = normalize(config)
    _check_rationales(config)
    _check_lists(config)
    _check_samplers(config)
    _check_fitted(config)  # after the lists: a fit names a model
    _check_adaptive(config)
    _check_sweep(config)  # after the samplers: NFE targets need each sampler's NFE per step
    _check_training(config)
    _check_ablation(config)
    _check_nll(config, given_nll)
    _check_labels(config)
    _check_file_names(config)
    _check_levels(config)
    _check_references(config)
    _check_gpus(config)
    _check_evaluation(config, deep)  # last: it opens the files
    _check_budget(config)
    _check_published(config)
    check_resources(config, workflow_rules())
    return config


def _shipped_files(config: dict) -> None:
    """`paper_results` and `published_results` name files relative to the working directory, else to this
    checkout (where the shipped ones lie); each becomes the path found, and a missing one is refused."""
    for key in ("paper_results", "published_results"):
        path = config[key]
        if not path:
            continue
        found = next((p for p in (Path(path), WORKFLOW.parent / path) if p.is_file()), None)
        if found is None:
            fail(key, f"{path}: no such file (relative to the working directory or to {WORKFLOW.parent}); give "
                      f"null for none")
        config[key] = str(found)


def _check_published(config: dict) -> None:
    """The published low-NFE rows the figures read: a mapping of network file names to rows of the PublishedRow
    fields, each typed."""
    _shipped_files(config)
    path = config["published_results"]
    if not path:
        return
    types = {"solver": str, "schedule": str, "nfe": int, "fid": (int, float), "source": str}
    table = read_yaml(path)
    if not isinstance(table, dict):
        fail("published_results", f"{path}: a mapping of network file names to lists of rows")
    for network, rows in table.items():
        if not isinstance(rows, list):
            fail("published_results", f"{path}: {network} must be a list of rows")
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or set(row) != set(types) or not all(
                    isinstance(row[k], t) and not isinstance(row[k], bool) for k, t in types.items()):
                fail("published_results", f"{path}: {network}[{i}] needs exactly {', '.join(types)} "
                                          f"(nfe an integer, fid a number), got {row!r}")
            if row["nfe"] < 1 or not (math.isfinite(row["fid"]) and row["fid"] >= 0) or not row["source"].strip():
                fail("published_results", f"{path}: {network}[{i}] needs nfe ≥ 1, a finite fid ≥ 0 and a source, "
                                          f"got {row!r}")


# --- semantic checks ----------------------------------------------------------------------------------
def _check_rationales(config: dict) -> None:
    """Each rationale's numerics: the hand-made ones first, so that a bad one is named itself rather than as the
    base or target of a fitted or adaptive rationale listed before it."""
    resolved = {}
    for name in config["rationales"]:
        try:
            resolved[name] = specs.resolve_rationale(name, config["rationales"][name], config["rationales"])
        except RationaleError as err:
            fail(f"rationales.{err.rationale.split('.')[0]}.{err.key}", str(err))
    derived = ("fitted", "adaptive", "learned")
    for name in sorted(resolved, key=lambda n: resolved[n]["family"] in derived):
        spec = resolved[name]
        try:
            if spec["family"] == "fitted":  # its schedule exists after its fit; its base is checked here
                check_numerics(build(f"{name}.base", spec["base"]))
            elif spec["family"] == "adaptive":  # its density is learned in training, on its target's domain
                check_numerics(build(f"{name}.target", spec["target"]))
            elif spec["family"] != "learned":  # a learned one's model is checked by _check_adaptive
                check_numerics(build(name, spec))
        except RationaleError as err:
            fail(f"rationales.{err.rationale.split('.')[0]}.{err.key}", str(err))


def _check_names(key: str, names: list, allowed: Mapping | list, what: str) -> None:
    if len(set(names)) != len(names):
        fail(key, f"lists a name twice: {names}")
    for name in names:
        if name not in allowed:
            fail(key, f"{name!r} is not {what}")


def _check_step(key: str, step: Any, config: dict, model: str | None = None) -> None:
    """`step` is "last" or a checkpoint of `model` (default: of the trained models)."""
    if step == "last":
        return
    if model is not None and not specs.is_trained(config, model):
        fail(key, f"step {step}: {model!r} is a pretrained model with one checkpoint; use last")
    train = config["train"]
    if not train["rationales"]:
        fail(key, f"step {step}: nothing is trained here; use last")
    if step % train["checkpoint_every"] or step > train["total_steps"]:
        fail(key, f"step {step} is not a checkpoint (multiples of {train['checkpoint_every']} up to "
                  f"{train['total_steps']})")


def _check_models(config: dict) -> None:
    """The models of the grid: trained rationales and pretrained networks, one namespace, at least one."""
    train, pretrained = config["train"], config["pretrained"]
    _check_names("train.rationales", train["rationales"], config["rationales"], "defined under rationales")
    if not train["rationales"] and not pretrained:
        fail("train.rationales", "no model to sample: list a training rationale or add a pretrained: model")
    if isinstance(train["seeds"], dict):
        _check_names("train.seeds", [k for k in train["seeds"] if k != "default"], train["rationales"],
                     "a training rationale (or default)")
    for model, (name, seed) in specs.trained(config).items():
        if seed and (model in config["rationales"] or model in pretrained):
            fail("train.seeds", f"the model of {name!r} with seed {seed} is named {model!r}, which names a rationale "
                                f"or a pretrained model too")
    for name, entry in pretrained.items():
        if name in config["rationales"]:
            fail(f"pretrained.{name}", "is also a rationale's name; give the model a name of its own")
        if entry["format"] not in FORMATS:
            fail(f"pretrained.{name}.format", f"{entry['format']!r} is not one of {list(FORMATS)}")
    if not train["rationales"]:
        return
    if train["total_steps"] % train["checkpoint_every"]:
        fail("train.total_steps", f"must be a multiple of checkpoint_every ({train['checkpoint_every']})")
    if train["total_steps"] // train["checkpoint_every"] > MAX_CHECKPOINTS:
        fail("train.checkpoint_every", f"total_steps / checkpoint_every = "
                                       f"{train['total_steps'] // train['checkpoint_every']} checkpoints, one training "
                                       f"job each; at most {MAX_CHECKPOINTS}")


def _check_lists(config: dict) -> None:
    _check_models(config)
    trained = layout.trained_models(config)
    for purpose in ("single", "repeated"):
        protocol = config["sample"][purpose]
        _check_names(f"sample.{purpose}.rationales", protocol["rationales"], config["rationales"],
                     "defined under rationales")
        _check_names(f"sample.{purpose}.samplers", protocol.get("samplers", []), config["sample"]["samplers"],
                     "under sample.samplers")
        _check_names(f"sample.{purpose}.train_rationales", protocol.get("train_rationales", []),
                     layout.models(config), "a model (a training rationale or a pretrained model)")
        for step in [] if protocol["checkpoints"] == "all" else protocol["checkpoints"]:
            _check_step(f"sample.{purpose}.checkpoints", step, config)
        if trained and not layout.protocol_steps(config, purpose, trained[0]):
            fail(f"sample.{purpose}.up_to", f"no checkpoint at or below step {protocol['up_to']}")
        if protocol["n_samples"] < MIN_SAMPLES:
            fail(f"sample.{purpose}.n_samples", f"needs at least {MIN_SAMPLES} samples for FID and KID")
    if config["sample"]["single"]["sets"] != 1:
        fail("sample.single.sets", "the single-set protocol has one set per checkpoint (use sample.repeated)")


def _check_sweep(config: dict) -> None:
    sweep = config["nfe_sweep"]
    if sweep["steps"] and sweep["nfe"]:
        fail("nfe_sweep.nfe", "give steps or NFE targets, not both (an empty list clears one: nfe: [])")
    if not (sweep["steps"] or sweep["nfe"]):
        return
    for key in ("rationales", "samplers", "n_samples"):
        if key not in sweep:
            fail(f"nfe_sweep.{key}", "required when nfe_sweep.steps or nfe is given")
    _check_names("nfe_sweep.samplers", sweep["samplers"], config["sample"]["samplers"], "under sample.samplers")
    for key in ("rationales", "nfe"):
        if isinstance(sweep[key], dict):
            _check_names(f"nfe_sweep.{key}", [k for k in sweep[key] if k != "default"], sweep["samplers"],
                         "under nfe_sweep.samplers (or default)")
    for name in sweep["samplers"]:
        where, names = layout.by_sampler(sweep, "rationales", name)
        if not names:
            fail(where, f"no rationales for the sampler {name!r} (give its own list or a default)")
        _check_names(where, names, config["rationales"], "defined under rationales")
    _check_names("nfe_sweep.train_rationales", sweep.get("train_rationales", []), layout.models(config),
                 "a model (a training rationale or a pretrained model)")
    if len(set(sweep["steps"])) != len(sweep["steps"]):
        fail("nfe_sweep.steps", f"lists a step count twice: {sweep['steps']}")
    for name in sweep["samplers"] if sweep["nfe"] else []:
        key, targets = layout.nfe_targets(sweep, name)
        if not targets:
            fail(key, f"no NFE targets for the sampler {name!r} (give its own list or a default)")
        if len(set(targets)) != len(targets):
            fail(key, f"lists an NFE twice: {targets}")
        for target in targets:
            try:
                entry = config["sample"]["samplers"][name]
                steps_for_nfe(entry["sampler"], target, entry.get("options"))
            except ValueError as err:
                fail(key, f"{name}: {err}")
    points, resolved = layout.sweep_points(config), specs.configured_rationales(config)
    for name in layout.sweep_rationales(sweep):
        spec = resolved[name]
        if not any(layout.sweeps_at(spec, config["sample"]["samplers"][s], k) for s, ks in points.items()
                   if name in layout.sweep_rationales(sweep, s) for k in ks):
            options = f" with {spec['options']}" if spec.get("options") else ""
            fail("nfe_sweep.rationales", f"{name!r} is fitted for {spec['sampler']}{options} at NFE {spec['nfe']}, a "
                                         f"point the sweep does not sample")
    for model in layout.sweep_models(config):
        _check_step("nfe_sweep.checkpoint", sweep["checkpoint"], config, model)
    if sweep["n_samples"] < MIN_SAMPLES:
        fail("nfe_sweep.n_samples", f"needs at least {MIN_SAMPLES} samples for FID and KID")


def _check_fitted(config: dict) -> None:
    """A fitted rationale: a model of the grid at one of its checkpoints, a method, a sampler and NFE it can fit
    (trajectory_dp only), a base inside the model's training domain; it samples, it does not train."""
    for name, spec in specs.fitted_rationales(config).items():
        entry, key = config["rationales"][name], f"rationales.{name}"
        if spec["model"] not in layout.models(config):
            fail(f"{key}.model", f"{spec['model']!r} is not a model (a training rationale or a pretrained model)")
        _check_step(f"{key}.step", entry["step"], config, spec["model"])
        if name in config["train"]["rationales"]:
            fail("train.rationales", f"{name!r} is fitted to a model's samples; it cannot train one")
        if spec["method"] in GRID_METHODS:
            _check_fit_target(key, spec)
        else:
            for option in ("sampler", "nfe", "options"):
                if option in entry:
                    fail(f"{key}.{option}", f"applies to the methods {' and '.join(GRID_METHODS)} only "
                                            f"({spec['method']} serves every NFE)")
        if specs.is_trained(config, spec["model"]):
            trained = specs.configured_rationales(config)[specs.trained(config)[spec["model"]][0]]
            if spec["sigma_min"] < trained["sigma_min"] or spec["sigma_max"] > trained["sigma_max"]:
                fail(f"{key}.base", f"its domain [{spec['sigma_min']:g}, {spec['sigma_max']:g}] leaves the domain "
                                    f"[{trained['sigma_min']:g}, {trained['sigma_max']:g}] {spec['model']!r} was "
                                    f"trained on")


def _check_adaptive(config: dict) -> None:
    """An adaptive rationale trains (its density exists only in training); a learned one reads a trained adaptive
    model's density at one of its checkpoints, and samples."""
    registry, trained = config["rationales"], config["train"]["rationales"]
    for name, entry in registry.items():
        key = f"rationales.{name}"
        if entry["family"] == "learned":
            if not specs.is_trained(config, entry["model"]):
                fail(f"{key}.model", f"{entry['model']!r} is not trained here with seed 0 (list it in "
                                     f"train.rationales)")
            _check_step(f"{key}.step", entry["step"], config, entry["model"])
            if name in trained:
                fail("train.rationales", f"{name!r} is a learned density to sample with; train with its model "
                                         f"{entry['model']!r}")
        if entry["family"] != "adaptive":
            continue
        sampling = {f"sample.{p}.rationales": config["sample"][p]["rationales"] for p in ("single", "repeated")}
        sampling["nfe_sweep.rationales"] = layout.sweep_rationales(config["nfe_sweep"])
        sampling["ablation.rationale"] = [config["ablation"].get("rationale")]
        for where, names in sampling.items():
            if name in names:
                fail(where, f"{name!r} is an adaptive training rationale; sample its learned density with a "
                            f"rationale {{family: learned, model: {name}}}")


def _check_fit_target(key: str, spec: dict) -> None:
    """A grid's fit (end_to_end, trajectory_dp) names a sampler it can fit and an NFE that sampler makes with 2 to
    FINE_LEVELS levels; an end-to-end fit holds one pilot image out at least."""
    for option in ("sampler", "nfe"):
        if option not in spec:
            fail(f"{key}.{option}", f"required by method {spec['method']}")
    options = spec.get("options")
    try:
        steps = steps_for_nfe(spec["sampler"], spec["nfe"], options)
    except ValueError as err:
        fail(f"{key}.nfe", str(err))
    if not 2 <= steps <= FINE_LEVELS:
        fail(f"{key}.nfe", f"{spec['sampler']} at NFE {spec['nfe']} visits {steps} noise level{'s' * (steps != 1)}; "
                           f"a fit needs 2 to {FINE_LEVELS} (NFE {nfe(spec['sampler'], 2, options)} to "
                           f"{nfe(spec['sampler'], FINE_LEVELS, options)})")


def _check_samplers(config: dict) -> None:
    for name, entry in config["sample"]["samplers"].items():
        try:
            resolve_options(entry["sampler"], entry.get("options", {}))
        except OptionError as err:
            fail(f"sample.samplers.{name}.options.{err.option}", f"{entry['sampler']}: {err}")


def _check_training(config: dict) -> None:
    weighting = config["train"]["weighting"]
    if weighting is None:
        return
    try:
        formula = compile_formula(weighting)
    except FormulaError as err:
        fail("train.weighting", str(err))
    for name in config["train"]["rationales"]:
        r = specs.all_rationales(config)[name]
        sigma = np.exp(np.linspace(math.log(r["sigma_min"]), math.log(r["sigma_max"]), 4097))
        values = formula(sigma)
        if not np.isfinite(values).all():
            bad = sigma[~np.isfinite(values)][0]
            fail("train.weighting", f"{weighting!r} is not finite at σ = {bad:.4g}, inside the training domain "
                                    f"[{r['sigma_min']:g}, {r['sigma_max']:g}] of {name!r}")
        if (values < 0).any():
            fail("train.weighting", f"{weighting!r} is negative at σ = {sigma[values < 0][0]:.4g} ({name!r})")
        if not (values > 0).any():
            fail("train.weighting", f"{weighting!r} is 0 everywhere on the domain of {name!r}")


def _check_ablation(config: dict) -> None:
    ablation = config["ablation"]
    if not ablation["sigma_n"]:
        return
    for key, allowed in (("rationale", config["rationales"]), ("train_rationale", layout.models(config)),
                         ("sampler", config["sample"]["samplers"])):
        if ablation.get(key) not in allowed:
            fail(f"ablation.{key}", f"{ablation.get(key)!r} is not one of {sorted(allowed)}")
    if config["rationales"][ablation["rationale"]]["family"] != "gaussian":
        fail("ablation.rationale", f"{ablation['rationale']!r} must be a gaussian rationale (σ_N is varied)")
    _check_step("ablation.checkpoint", ablation["checkpoint"], config, ablation["train_rationale"])
    if len(set(ablation["sigma_n"])) != len(ablation["sigma_n"]):
        fail("ablation.sigma_n", f"lists a σ_N twice: {ablation['sigma_n']}")
    configured = specs.configured_rationales(config)
    for name, spec in specs.ablation_rationales(config).items():
        if name in configured and configured[name] != spec:
            fail("ablation.sigma_n", f"the ablation's rationale name {name!r} is taken by a different rationale")
        try:
            check_numerics(build(name, spec))
        except RationaleError as err:
            fail("ablation.sigma_n", f"σ_N = {spec['sigma_n']:g} gives an unusable schedule: {err}")


def _check_nll(config: dict, given: Any) -> None:
    """The likelihood runs only when asked for by `n_images`; its images, estimator and checkpoints must exist."""
    nll = config["nll"]
    if given and "n_images" not in nll:
        fail("nll.n_images", "required in an nll: section (leave the section out for no likelihood)")
    if "n_images" not in nll:
        return
    info = DATASETS[config["dataset"]["name"]]
    if not info.splits:
        fail("nll.n_images", f"the likelihood needs images of the dataset; {config['dataset']['name']} is known here "
                             f"only by its reference statistics")
    available = info.sizes[info.reference_split]
    if nll["n_images"] != "all" and nll["n_images"] > available:
        fail("nll.n_images", f"{nll['n_images']} images asked for, but the {info.reference_split} split of "
                             f"{config['dataset']['name']} holds {available} (use all)")
    dims = math.prod(info.shape)
    if nll["estimator"] == "exact" and dims > EXACT_MAX_DIMS:
        fail("nll.estimator", f"exact traces cost one backward pass per dimension at every ODE step: "
                              f"{dims} for {config['dataset']['name']} (the limit is {EXACT_MAX_DIMS}); use "
                              f"rademacher or gaussian")
    if nll["checkpoints"] not in ("last", "all"):
        for step in nll["checkpoints"]:
            _check_step("nll.checkpoints", step, config)


def _check_labels(config: dict) -> None:
    """Every label typesets in the tables' LaTeX, and no two names share a label: labels are the rows and columns
    of the tables and the legends of the figures (checked here, not after the sampling they would label)."""
    for section in ("rationales", "pretrained"):
        for name, entry in config[section].items():
            try:
                latex.escape(entry.get("label", name))
            except ValueError as err:
                fail(f"{section}.{name}.label", str(err))
    named: dict[str, str] = {}
    for name, label in specs.labels(config).items():
        if label in named:
            section = "pretrained" if name in config["pretrained"] else "rationales"
            key = f"{section}.{name}.label" if name in config[section] else "ablation.sigma_n"
            fail(key, f"{label!r} is also the label of {named[label]!r}: tables and figures would not tell them apart")
        named[label] = name


def _check_file_names(config: dict) -> None:
    """Every file name a cell makes fits the file system (255 bytes), with room for a temp or .corrupt suffix."""
    for cell in layout.cells(config):
        name = layout.CELL_JOB.format(**cell.wildcards()) + ".jsonl"
        if len(name.encode()) > layout.MAX_FILE_NAME:
            key = f"rationales.{cell.sample}" if cell.sample in config["rationales"] else "ablation.sigma_n"
            fail(key, f"the cell's log file name {name!r} would be {len(name.encode())} bytes, more than "
                      f"{layout.MAX_FILE_NAME}: shorten the rationale or sampler names")


def _check_levels(config: dict) -> None:
    """Every cell's sampler steps through strictly decreasing noise levels of its schedule (a flat step divides by
    zero in the multistep solvers), and every fit's base has strictly decreasing fine levels. A fitted or learned
    schedule exists only after its job, which checks its own levels."""
    rationales, configured = specs.all_rationales(config), config["rationales"]
    built: dict[str, Any] = {}
    checked: set[tuple[str, str, int]] = set()
    for cell in layout.cells(config):
        spec, entry = rationales[cell.sample], specs.sampler_entry(config, cell.sampler)
        key = (cell.sample, entry["sampler"], int(entry["steps"]))
        if spec["family"] in ("fitted", "learned") or key in checked:
            continue
        checked.add(key)
        schedule = built.setdefault(cell.sample, build(cell.sample, spec))
        try:
            sampled_levels(entry["sampler"], schedule, int(entry["steps"]))
        except ScheduleError as err:
            where = f"rationales.{cell.sample}" if cell.sample in configured else "ablation.sigma_n"
            fail(where, f"sampled by {cell.sampler} ({entry['sampler']}): {err}")
    for name, spec in specs.fitted_rationales(config).items():
        try:
            fine_levels(build(f"{name}.base", spec["base"]))
        except ScheduleError as err:
            fail(f"rationales.{name}.base", f"the fit's grid: {err}")


def _check_references(config: dict) -> None:
    """A deterministic cell's distance from the flow is measured on the first reference_images of its set."""
    images = config["nfe_sweep"]["reference_images"]
    for cell in layout.distance_cells(config):
        if images > cell.n:
            fail("nfe_sweep.reference_images", f"{images} images measured against the probability-flow solution, but "
                                               f"the cell {layout.CELL_JOB.format(**cell.wildcards())} holds "
                                               f"{cell.n}")


def _check_gpus(config: dict) -> None:
    """GPUs only where they are used: generation, evaluation and NLL run one process on one GPU; training splits the
    global batch evenly across its GPUs."""
    for rule, entry in config["resources"].items():
        gpus = (entry or {}).get("gpus", 0)
        if gpus > 1 and rule != "train_segment":
            fail(f"resources.{rule}.gpus", f"{gpus} GPUs requested, but a {rule} job is one process on one GPU "
                                           f"(only train_segment runs data-parallel); use 1")
    gpus = ((config["resources"].get("train_segment") or {}).get("gpus", 0))
    if gpus > 1 and config["train"]["rationales"] and config["train"]["batch_size"] % gpus:
        fail("train.batch_size", f"{config['train']['batch_size']} does not split evenly across the {gpus} GPUs of "
                                 f"resources.train_segment.gpus")


def _check_evaluation(config: dict, deep: bool) -> None:
    dataset = config["dataset"]
    info = DATASETS[dataset["name"]]
    _check_reference(config, deep)
    _check_pretrained_files(config, deep)
    if not info.splits:
        if config["train"]["rationales"]:
            fail("train.rationales", f"{dataset['name']} is known here only by its reference statistics: nothing can "
                                     f"be trained on it (sample its pretrained models)")
    elif not info.embedded:
        root = dataset["data_root"]
        if not root:
            fail("dataset.data_root", f"dataset {dataset['name']!r} needs a local data_root")
        if not dataset["download"] and not Path(root).is_dir():
            fail("dataset.data_root", f"{root}: no such folder (set download: true on a machine with internet)")
        if deep and not dataset["download"]:
            try:
                check_upstream(dataset["name"], root)
            except DataError as err:
                fail("dataset.data_root", str(err))
    chosen = extractor(config)
    if chosen == DATASETS["digits"].extractor and not info.embedded:
        fail("evaluate.extractor", "the digits CNN only scores the digits dataset")
    if chosen != DATASETS["digits"].extractor:
        evaluate = config["evaluate"]
        path = evaluate["feature_extractor_weights_path"]
        if not path:
            fail("evaluate.feature_extractor_weights_path", f"{chosen} needs a local weights file (never downloaded)")
        if not Path(path).is_file():
            fail("evaluate.feature_extractor_weights_path", f"{path}: no such file")
        expected = evaluate["feature_extractor_sha256"]
        digest = content_sha256(path) if deep else expected  # the Snakefile keys evaluate by this digest too
        if not digest.startswith(expected):
            fail("evaluate.feature_extractor_weights_path",
                 f"{path}: sha256 {digest[:12]}… does not start with evaluate.feature_extractor_sha256 "
                 f"({expected}): not the expected weights file")


def _check_reference(config: dict, deep: bool) -> None:
    """FID's reference: a split of the dataset, or published statistics of the extractor's features."""
    evaluate, info = config["evaluate"], DATASETS[config["dataset"]["name"]]
    split, statistics = evaluate["reference_split"], evaluate["reference_statistics"]
    if split != "auto" and split not in info.splits:
        fail("evaluate.reference_split", f"{split!r} is not a split of {config['dataset']['name']} "
                                         f"({', '.join(info.splits) or 'none: use evaluate.reference_statistics'})")
    if statistics is None:
        if not info.splits:
            fail("evaluate.reference_statistics", f"{config['dataset']['name']} has no images here: give the "
                                                  f"published reference statistics (.npz with mu and sigma)")
        return
    if not Path(statistics).is_file():
        fail("evaluate.reference_statistics", f"{statistics}: no such file")
    if deep:
        try:
            read_fid_statistics(statistics, FID_FEATURES[extractor(config)])
        except DataError as err:
            fail("evaluate.reference_statistics", str(err))


def _check_pretrained_files(config: dict, deep: bool) -> None:
    for name, entry in config["pretrained"].items():
        if not Path(entry["path"]).is_file():
            fail(f"pretrained.{name}.path", f"{entry['path']}: no such file (the published networks are never "
                                            f"downloaded: fetch it once, see docs/published-networks.md)")
        expected = entry.get("sha256")
        digest = content_sha256(entry["path"]) if deep and expected else expected
        if expected and not digest.startswith(expected):
            fail(f"pretrained.{name}.sha256", f"{entry['path']}: sha256 {digest[:12]}… does not start with "
                                              f"{expected}: not the expected file")
        if deep:  # the file's structure, arguments, shape and classes: what import_network would refuse, now
            info = DATASETS[config["dataset"]["name"]]
            try:
                inspect_network(entry["path"], expect_shape=info.shape, expect_classes=info.num_classes)
            except PretrainedError as err:
                fail(f"pretrained.{name}.path", str(err).removesuffix("; nothing was written"))


def _check_budget(config: dict) -> None:
    path = config["budget"]["throughput"]
    if path is not None:
        try:
            read_throughput(path)
        except CostError as err:
            fail("budget.throughput", str(err))


