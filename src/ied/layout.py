"""The experiment's cells, output paths and artefact names, and what each table and figure receives: the one
definition the rules, the tables and the figures read.

Patterns are relative to the experiment folder `results/<experiment>/` and use the Snakemake wildcard
names, so a rule's output is `f"{root}/{SAMPLES}"` and a figure finds a grid with `cell_path(GRID, cell)`.
Torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, TypedDict

from ied import samplers, specs
from ied.config import read_yaml
from ied.data import DATASETS

RESULTS = "results"
DATA = "data/{split}.npz"
SCHEDULE = "schedules/{rationale}.parquet"
TEACHER = "teachers/{train}/{step}/{teacher}.npz"  # a fit's teacher trajectory, shared by fits of one base and pilot
CHECKPOINT = "checkpoints/{train}/ckpt-{step}.pt"
LOSS = "losses/{train}/loss-{step}.parquet"  # a training segment's ε-loss per log-σ bin
DENSITY = "densities/{train}/density-{step}.parquet"  # an adaptive training rationale's density after a segment
NLL = "nll/{train}/nll-{step}.parquet"  # bits/dim per image and probe (ied.nll)
CELL = "{train}/{step}/{sample}/{sampler}/n{n}-seed{seed}"
CELL_JOB = "{train}-{step}-{sample}-{sampler}-n{n}-seed{seed}"  # a cell's log and benchmark file name
SAMPLES = f"samples/{CELL}.npz"
GRID = f"grids/{CELL}.png"
METRIC_ROW = f"metrics/rows/{CELL}.parquet"
# the probability-flow solution of a set's first images, and each deterministic cell's distance from it
REFERENCE = "references/{train}/{step}/{domain}/n{n}-seed{seed}.npz"
DISTANCE = "metrics/distance/{train}/{step}/{domain}/n{n}-seed{seed}.parquet"
METRICS = "metrics.parquet"
EVALUATOR = "evaluator/digits-cnn.pt"
FIDELITY_CACHE = "evaluator/fidelity-cache"
REPORT = "report.md"
LOG = "logs/{rule}/{job}.log"
JSON_LOG = "logs/{rule}/{job}.jsonl"
BENCHMARK = "benchmarks/{rule}/{job}.tsv"
TABLE_FORMATS = ("parquet", "md", "tex")
FIGURE_FORMATS = ("png", "pdf")
# Tables and figures by the paper's numbers: a CIFAR-10-style run (the embedded digits default too) writes
# Tables 1, 3 and Figs. 3, 5, 6, 8; an ImageNet-32 run Tables 2, 4 and Figs. 4, 7, 9 (and 5 with an ablation).
PAPER_NUMBERS = {
    "cifar10": {"single": "table1", "repeated": "table3", "over_training": "fig3_fid_is_over_training",
                "ablation": "fig5_sigma_n_ablation", "over_sets": "fig6_fid_over_sets", "samples": "fig8_samples"},
    "imagenet32": {"single": "table2", "repeated": "table4", "over_training": "fig4_fid_is_over_training",
                   "ablation": "fig5_sigma_n_ablation", "over_sets": "fig7_fid_over_sets", "samples": "fig9_samples"},
}
COMMON_FIGURES = {"rationales": "fig1_rationales", "marginals": "fig2_marginals", "comparison": "paper_comparison",
                  "loss_by_sigma": "loss_by_sigma", "adaptive": "adaptive_density"}
MAX_FILE_NAME = 240  # bytes of a file name the pipeline makes: 255, less room for ".<name>.XXXXXXXX.tmp"
NAME_PATTERN = r"[A-Za-z][A-Za-z0-9_.-]*"  # rationale names: one path component each
SAMPLER_PATTERN = r"[A-Za-z][A-Za-z0-9_.]*(-[0-9]+)?"  # a sampler, or an NFE-sweep point <sampler>-<steps>


@dataclass(frozen=True)
class Cell:
    """One generate+evaluate job: a checkpoint sampled with one schedule and sampler, one set of n images."""

    train: str
    step: int
    sample: str
    sampler: str
    n: int
    seed_set: int

    def wildcards(self) -> dict[str, Any]:
        return {"train": self.train, "step": self.step, "sample": self.sample, "sampler": self.sampler,
                "n": self.n, "seed": self.seed_set}


def experiment_root(config: Mapping[str, Any]) -> str:
    return f"{RESULTS}/{config['experiment']}"


def cell_path(pattern: str, cell: Cell) -> str:
    """A per-cell pattern (SAMPLES, GRID, METRIC_ROW) filled in for one cell."""
    return pattern.format(**cell.wildcards())


PRETRAINED_STEP = specs.PRETRAINED_STEP


def has_schedule(spec: Mapping[str, Any]) -> bool:
    """Whether a resolved rationale has a schedule table (SCHEDULE): all but an adaptive one, whose density moves."""
    return spec["family"] != "adaptive"


def tabulated(spec: Mapping[str, Any]) -> bool:
    """Whether its schedule table is tabulated from the spec alone (not fitted to, or learned by, a model)."""
    return spec["family"] not in ("fitted", "learned", "adaptive")


def trained_models(config: Mapping[str, Any]) -> list[str]:
    """The models this pipeline trains: one per training rationale and seed (`specs.trained`)."""
    return list(specs.trained(config))


def pretrained_models(config: Mapping[str, Any]) -> list[str]:
    """The published models it imports (`pretrained:`)."""
    return list(config.get("pretrained") or {})


def models(config: Mapping[str, Any]) -> list[str]:
    """Every model of the grid, trained first, in the config's order: the rows of every table."""
    return trained_models(config) + pretrained_models(config)


def checkpoint_steps(config: Mapping[str, Any]) -> list[int]:
    """Every checkpoint the training writes: multiples of checkpoint_every up to total_steps."""
    train = config["train"]
    if not train["rationales"]:
        return []
    return list(range(train["checkpoint_every"], train["total_steps"] + 1, train["checkpoint_every"]))


def protocol_steps(config: Mapping[str, Any], purpose: str, model: str | None = None) -> list[int]:
    """The checkpoints a sample-set protocol (`single` or `repeated`) evaluates of `model`: a trained model's listed
    checkpoints up to `up_to`, a pretrained model's one; without `model`, those of every model."""
    if model is None:
        return sorted({step for m in protocol_models(config, purpose) for step in protocol_steps(config, purpose, m)})
    if not specs.is_trained(config, model):
        return [PRETRAINED_STEP]
    protocol = config["sample"][purpose]
    wanted = checkpoint_steps(config) if protocol["checkpoints"] == "all" else sorted(protocol["checkpoints"])
    return [s for s in wanted if protocol["up_to"] is None or s <= protocol["up_to"]]


def nll_steps(config: Mapping[str, Any], model: str) -> list[int]:
    """The checkpoints of `model` whose likelihood is computed ([] without an `nll:` section)."""
    nll = config["nll"]
    if "n_images" not in nll:
        return []
    if not specs.is_trained(config, model):
        return [PRETRAINED_STEP]
    wanted = nll["checkpoints"]
    steps = checkpoint_steps(config)
    return steps[-1:] if wanted == "last" else steps if wanted == "all" else sorted(wanted)


def ablation_step(config: Mapping[str, Any]) -> int:
    ablation = config["ablation"]
    return specs.checkpoint_step(config, ablation["train_rationale"], ablation["checkpoint"])


def with_seeds(config: Mapping[str, Any], names: list[str]) -> list[str]:
    """Models named by a list of training rationales and models: a training rationale stands for its models of every
    seed, in order."""
    seeded = specs.trained(config)
    return list(dict.fromkeys(m for name in names for m in ([k for k, (r, _) in seeded.items() if r == name]
                                                            if name in config["train"]["rationales"] else [name])))


def sweep_models(config: Mapping[str, Any]) -> list[str]:
    """The models of the NFE sweep: its `train_rationales` (each with its seeds), or every model."""
    return with_seeds(config, config["nfe_sweep"].get("train_rationales") or models(config))


def sweep_step(config: Mapping[str, Any], model: str) -> int:
    return specs.checkpoint_step(config, model, config["nfe_sweep"]["checkpoint"])


def protocol_models(config: Mapping[str, Any], purpose: str) -> list[str]:
    """The models a sample-set protocol samples: its `train_rationales` (each with its seeds), or every model."""
    return with_seeds(config, config["sample"][purpose].get("train_rationales") or models(config))


def protocol_cells(config: Mapping[str, Any], purpose: str) -> list[Cell]:
    """Model × checkpoint × sampling rationale × sampler × set of one protocol."""
    protocol = config["sample"][purpose]
    return [Cell(t, step, s, sampler, protocol["n_samples"], k) for t in protocol_models(config, purpose)
            for step in protocol_steps(config, purpose, t) for s in protocol["rationales"]
            for sampler in protocol_samplers(config, purpose) for k in range(protocol["sets"])]


def protocol_samplers(config: Mapping[str, Any], purpose: str) -> list[str]:
    """The samplers of a protocol: its `samplers` list, or every configured sampler."""
    return config["sample"][purpose].get("samplers") or list(config["sample"]["samplers"])


def ablation_cells(config: Mapping[str, Any]) -> list[Cell]:
    """Fig. 5: one model, one sampler, N(0, σ_N²) for each σ_N; as many images as the single sets."""
    ablation = config["ablation"]
    if not ablation["sigma_n"]:
        return []
    return [Cell(ablation["train_rationale"], ablation_step(config), name, ablation["sampler"],
                 config["sample"]["single"]["n_samples"], 0) for name in specs.ablation_rationales(config)]


def by_sampler(sweep: Mapping[str, Any], key: str, sampler: str) -> tuple[str, list]:
    """A swept sampler's list under `key` (its NFE targets, its rationales) and the config key it comes from: `<key>`
    if a list, else `<key>.<sampler>` or `<key>.default`."""
    value = sweep[key]
    if isinstance(value, list):
        return f"nfe_sweep.{key}", list(value)
    name = sampler if sampler in value else "default"
    return f"nfe_sweep.{key}.{name}", list(value.get(name, []))


def nfe_targets(sweep: Mapping[str, Any], sampler: str) -> tuple[str, list[int]]:
    """A swept sampler's NFE targets and the config key they come from (`by_sampler`)."""
    return by_sampler(sweep, "nfe", sampler)


def sweep_rationales(sweep: Mapping[str, Any], sampler: str | None = None) -> list[str]:
    """The rationales the sweep samples with a sampler (`by_sampler`), or, without one, those of every swept sampler
    in the config's order."""
    if sampler is not None:
        return by_sampler(sweep, "rationales", sampler)[1]
    return list(dict.fromkeys(name for s in sweep.get("samplers", []) for name in sweep_rationales(sweep, s)))


def sweep_points(config: Mapping[str, Any]) -> dict[str, list[int]]:
    """The NFE sweep's step counts per sampler name: `nfe_sweep.steps`, or the steps that make each of the
    sampler's NFE targets; empty when there is no sweep."""
    sweep = config["nfe_sweep"]
    if sweep["steps"]:
        return {name: list(sweep["steps"]) for name in sweep["samplers"]}
    if not sweep["nfe"]:
        return {}
    entries = config["sample"]["samplers"]
    return {name: [samplers.steps_for_nfe(entries[name]["sampler"], n, entries[name].get("options"))
                   for n in nfe_targets(sweep, name)[1]] for name in sweep["samplers"]}


def teacher_path(spec: Mapping[str, Any]) -> str:
    """The teacher file a resolved fitted spec reads (relative to the experiment folder)."""
    return TEACHER.format(train=spec["model"], step=spec["step"], teacher=specs.teacher_key(spec))


def teachers(config: Mapping[str, Any]) -> dict[str, dict]:
    """Every teacher the fits read, by path: its model, checkpoint and `specs.teacher_spec`."""
    return {teacher_path(spec): {"model": spec["model"], "step": spec["step"], **specs.teacher_spec(spec)}
            for spec in specs.fitted_rationales(config).values()}


def sweeps_at(spec: Mapping[str, Any], sampler: Mapping[str, Any], steps: int) -> bool:
    """Whether the sweep samples a rationale at a point (a configured sampler at a step count): a grid fitted for one
    sampler (its algorithm and options) and NFE only there, every other rationale everywhere."""
    if spec.get("method") not in ("trajectory_dp", "end_to_end"):
        return True
    options = samplers.identity_options(sampler["sampler"], sampler.get("options", {}))
    return sampler["sampler"] == spec["sampler"] and options == spec.get("options", {}) \
        and samplers.nfe(sampler["sampler"], steps, options) == spec["nfe"]


def point_names(config: Mapping[str, Any]) -> dict[tuple[str, int], str]:
    """The sampler name of each NFE-sweep point (sampler, steps), its cells' path component: `<sampler>-<steps>`, what
    determines its output. The sampler's name alone where that name stands for the same steps (`bare_steps`), so
    the cells are one: a protocol's, generated once, or those a finished run wrote under it."""
    points = sweep_points(config)
    bare = {sampler: bare_steps(config, sampler) for sampler in points}
    return {(sampler, steps): sampler if steps == bare[sampler] else f"{sampler}-{steps}"
            for sampler, counts in points.items() for steps in counts}


def bare_steps(config: Mapping[str, Any], sampler: str) -> int | None:
    """The steps the sampler's name alone stands for in a cell path: its configured steps where a protocol or the
    ablation samples with it; else the steps of the sweep sets a run wrote under that name before sweep points were
    named `<sampler>-<steps>` (when they all agree, so that finished run reruns nothing); else none."""
    entry = config["sample"]["samplers"][sampler]
    users = protocol_samplers(config, "single") + protocol_samplers(config, "repeated")
    if sampler in users or (config["ablation"]["sigma_n"] and config["ablation"].get("sampler") == sampler):
        return int(entry["steps"])
    found = set()
    for path in Path(experiment_root(config)).glob(f"samples/*/*/*/{sampler}/n*-seed*.npz"):
        found.add(_generated_with(path))
    return next(iter(found))[1] if len(found) == 1 and next(iter(found))[0] == entry["sampler"] else None


def _generated_with(path: Path) -> tuple[str | None, int | None]:
    """The sampler algorithm and steps a samples file was generated with (from its metadata alone), or Nones."""
    import json

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as npz:
            info = json.loads(json.loads(str(npz["meta"])).get("generation") or "{}")
        return info.get("sampler"), info.get("steps")
    except Exception:  # noqa: BLE001 — an unreadable file names nothing; it is regenerated where it is needed
        return None, None


def sweep_cells(config: Mapping[str, Any]) -> list[Cell]:
    """FID against NFE: each listed sampler at each of its step counts, one set per cell, at one checkpoint (a grid
    fitted for one sampler and NFE only there)."""
    sweep, points = config["nfe_sweep"], sweep_points(config)
    if not points:
        return []
    rationales, algorithms, names = specs.configured_rationales(config), config["sample"]["samplers"], \
        point_names(config)
    return [Cell(t, sweep_step(config, t), s, names[sampler, steps], sweep["n_samples"], 0)
            for t in sweep_models(config) for s in sweep_rationales(sweep)
            for sampler, counts in points.items() if s in sweep_rationales(sweep, sampler) for steps in counts
            if sweeps_at(rationales[s], algorithms[sampler], steps)]


def cells(config: Mapping[str, Any]) -> list[Cell]:
    """Every (cell, checkpoint, set) any table or figure needs, each once."""
    out = protocol_cells(config, "single") + protocol_cells(config, "repeated") + ablation_cells(config) \
        + sweep_cells(config)
    return list(dict.fromkeys(out))


def distance_cells(config: Mapping[str, Any]) -> list[Cell]:
    """The cells of a deterministic sampler (the sweep's, a protocol's deterministic samplers and fitted grids): each
    has a distance from the probability-flow solution."""
    return [c for c in cells(config) if _deterministic(config, c.sampler)]


def _deterministic(config: Mapping[str, Any], name: str) -> bool:
    entry = specs.sampler_entry(config, name)
    return samplers.deterministic(entry["sampler"], entry.get("options", {}))


def domain(spec: Mapping[str, Any]) -> str:
    """A σ domain as a path component, `<σ_min>-<σ_max>` (the shortest spelling of each number)."""
    return f"{specs.short_number(spec['sigma_min'])}-{specs.short_number(spec['sigma_max'])}"


def reference_of(config: Mapping[str, Any], cell: Cell, pattern: str = REFERENCE) -> str:
    """The reference a deterministic cell is measured against (relative to the experiment folder): its model,
    checkpoint, sampling rationale's domain, set size and seed set; with `pattern` DISTANCE, the distance job's."""
    spec = specs.all_rationales(config)[cell.sample]
    return pattern.format(train=cell.train, step=cell.step, domain=domain(spec), n=cell.n, seed=cell.seed_set)


def references(config: Mapping[str, Any]) -> dict[str, dict]:
    """Every reference the distance jobs read, by path: its `specs.reference_spec`."""
    rationales = specs.all_rationales(config)
    return {reference_of(config, c): specs.reference_spec(config, rationales[c.sample], c.n, c.seed_set)
            for c in distance_cells(config)}


def distance_groups(config: Mapping[str, Any]) -> dict[str, list[Cell]]:
    """The deterministic cells by the distance job that measures them (one per reference), by its output path."""
    groups: dict[str, list[Cell]] = {}
    for cell in distance_cells(config):
        groups.setdefault(reference_of(config, cell, DISTANCE), []).append(cell)
    return groups


def artefacts(config: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """Table and figure file stems by role, named by the paper's numbers for this run's dataset."""
    numbers = PAPER_NUMBERS[DATASETS[config["dataset"]["name"]].paper_style]
    tables = {"single": numbers["single"], "repeated": numbers["repeated"]}
    figures = {**COMMON_FIGURES, **{k: v for k, v in numbers.items() if k not in tables}}
    if numbers["single"] == "table2" and not config["ablation"]["sigma_n"]:
        del figures["ablation"]  # the paper's σ_N ablation is a CIFAR-10 study
    if sweep_points(config):
        tables["nfe"] = figures["nfe"] = "fid_nfe"
    if "n_images" in config["nll"]:
        tables["nll"], figures["nll"] = "nll", "nll_over_training"
    if not trained_models(config):
        del figures["loss_by_sigma"]  # nothing trained here: no training loss
    if not specs.adaptive_models(config):
        del figures["adaptive"]
    return {"tables": tables, "figures": figures}


def tables(config: Mapping[str, Any]) -> list[str]:
    return [f"tables/{name}.{ext}" for name in artefacts(config)["tables"].values() for ext in TABLE_FORMATS]


def figures(config: Mapping[str, Any]) -> list[str]:
    return [f"figures/{name}.{ext}" for name in artefacts(config)["figures"].values() for ext in FIGURE_FORMATS]


# --- what the tables and figures receive (the rules pass it as JSON: `ied tables/figures --experiment`) ---------
class Protocol(TypedDict):
    """A sample-set protocol: the models it samples (and each trained one's training rationale and seed), its
    sampling rationales and samplers, sample size, sets and checkpoints."""

    train: list[str]
    seeds: dict[str, list]
    rationales: list[str]
    samplers: list[str]
    n_samples: int
    sets: int
    steps: list[int]


class SweepPoint(TypedDict):
    sampler: str
    steps: int


class Sweep(TypedDict, total=False):
    """The FID-vs-NFE sweep (empty when none is configured): models, rationales, samplers (and each one's solver as
    published rows name it), its points by sampler name (`<sampler>-<steps>`), each model's checkpoint, the sample
    size."""

    train: list[str]
    rationales: list[str]
    samplers: list[str]
    solvers: dict[str, str]
    points: dict[str, SweepPoint]
    checkpoint: dict[str, int]
    n_samples: int


class TableInputs(TypedDict):
    """What the tables read: names in the config's order, labels, each trained model's training rationale and seed,
    the protocols, the sweep, the artefact names and each model's NLL checkpoints."""

    train: list[str]
    seeds: dict[str, list]
    pretrained: list[str]
    samplers: list[str]
    labels: dict[str, str]
    single: Protocol
    repeated: Protocol
    sweep: Sweep
    artefacts: dict[str, dict[str, str]]
    nll_steps: dict[str, list[int]]


class Ablation(TypedDict):
    train_rationale: str | None
    sampler: str | None
    sigma_n: dict[str, float]
    checkpoint: int | None


class PublishedRow(TypedDict):
    """One published result: a solver with a schedule at an NFE, its FID, and the paper and table it comes from."""

    solver: str
    schedule: str
    nfe: int
    fid: float
    source: str


class FigureInputs(TableInputs):
    """What the figures read: the tables' inputs, the dataset and its paper style, the schedules (the fitted and
    learned ones among them), the adaptive models' targets, the ablation, the paper's published tables and the
    published low-NFE rows of each pretrained model."""

    dataset: str
    paper_style: str
    schedules: list[str]
    fitted: list[str]
    learned: list[str]
    adaptive: dict[str, str | None]
    ablation: Ablation
    paper: dict
    published: dict[str, list[PublishedRow]]


def protocol(config: Mapping[str, Any], purpose: str) -> Protocol:
    """The `sample.single` or `sample.repeated` protocol as the tables and figures read it."""
    entry, trained = config["sample"][purpose], specs.trained(config)
    chosen = protocol_models(config, purpose)
    return {"train": chosen, "seeds": {m: list(trained[m]) for m in chosen if m in trained},
            "rationales": entry["rationales"],
            "samplers": protocol_samplers(config, purpose),
            "n_samples": entry["n_samples"], "sets": entry["sets"], "steps": protocol_steps(config, purpose)}


def sweep(config: Mapping[str, Any]) -> Sweep:
    """The NFE sweep as the tables and figures read it."""
    entry, counts = config["nfe_sweep"], sweep_points(config)
    if not counts:
        return {}
    points = {name: {"sampler": s, "steps": k} for (s, k), name in point_names(config).items()}
    trained = sweep_models(config)
    entries = config["sample"]["samplers"]
    solvers = {name: samplers.describe(entries[name]["sampler"], entries[name].get("options"))
               for name in entry["samplers"]}
    return {"train": trained, "rationales": sweep_rationales(entry), "samplers": entry["samplers"], "solvers": solvers,
            "points": points,
            "checkpoint": {m: sweep_step(config, m) for m in trained}, "n_samples": entry["n_samples"]}


def table_inputs(config: Mapping[str, Any]) -> TableInputs:
    """What `ied tables` receives."""
    return {"train": models(config), "seeds": {m: list(v) for m, v in specs.trained(config).items()},
            "pretrained": pretrained_models(config),
            "samplers": list(config["sample"]["samplers"]), "labels": specs.labels(config),
            "single": protocol(config, "single"), "repeated": protocol(config, "repeated"), "sweep": sweep(config),
            "artefacts": artefacts(config), "nll_steps": {m: nll_steps(config, m) for m in models(config)}}


def figure_inputs(config: Mapping[str, Any]) -> FigureInputs:
    """What `ied figures` receives (the paper's tables read from `paper_results` and the published low-NFE rows from
    `published_results`, where those files exist)."""
    ablation = {name: spec["sigma_n"] for name, spec in specs.ablation_rationales(config).items()}
    paper, dataset = config["paper_results"], config["dataset"]["name"]
    return {**table_inputs(config), "dataset": dataset, "paper_style": DATASETS[dataset].paper_style,
            "schedules": [n for n, spec in specs.configured_rationales(config).items() if has_schedule(spec)],
            "fitted": list(specs.fitted_rationales(config)),
            "learned": list(specs.learned_rationales(config)),
            "adaptive": {m: _target_name(config["rationales"][specs.trained(config)[m][0]])
                         for m in specs.adaptive_models(config)},
            "ablation": {"train_rationale": config["ablation"].get("train_rationale"),
                         "sampler": config["ablation"].get("sampler"), "sigma_n": ablation,
                         "checkpoint": ablation_step(config) if ablation else None},
            "paper": read_yaml(paper) if paper else {},
            "published": published_rows(config)}


def published_rows(config: Mapping[str, Any]) -> dict[str, list[dict]]:
    """The published low-NFE rows (`published_results`) of each pretrained model, found by its file's name."""
    path = config["published_results"]
    table = read_yaml(path) if path else {}
    return {model: table[Path(entry["path"]).name] for model, entry in (config.get("pretrained") or {}).items()
            if Path(entry["path"]).name in table}


def _target_name(entry: Mapping[str, Any]) -> str | None:
    """An adaptive entry's target by name (None when given inline)."""
    return entry["target"] if isinstance(entry["target"], str) else None
