"""The bill of a config before it is paid: GPU jobs, their work and GPU-hours, done and to do, and a budget.

The jobs are the DAG's (ied.layout: every training segment, generation, evaluation and likelihood job); which of
them this invocation runs is Snakemake's own decision, read from the DAG it built (its targets, its forced reruns):
`dag_plan(dag)`. The Snakefile bills every run and dry run from it, and applies the budget just before the first job of
a run (Snakemake's `onstart`): a command that runs no job (--unlock, --lint, --list-rules, --dag, --report, --touch)
is never refused.
Work per job: training images (steps × batch), a teacher's pilot images × its denoiser evaluations, a fit's denoiser
evaluations at their bound (ied.fitting.fit_work),
generated images × NFE, a reference's images × its two Heun solves' NFE, a distance job's images × its cells' NFE,
likelihood images × probes × the expected
NFE of one ODE solve, evaluated images. GPU-hours = work ÷ throughput, the throughput from a JSON `ied bench`
wrote on the target GPU, or else the paper's A100 figures. Job start-up is not counted.

Torch-free: the Snakefile bills and budgets the DAG (workflow/rules/bill.smk) before any job runs.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from ied import layout, specs
from ied.data import DATASETS, DIGITS_CNN, INCEPTION
from ied.fitting import fit_work, teacher_calls
from ied.samplers import nfe

# import_network, tables… run on CPUs; an adaptive model's segments are train_adaptive_segment jobs, as Snakemake
# names them (train_segment's resources and rate)
GPU_RULES = ("train_segment", "train_adaptive_segment", "teacher", "fit_rationale", "generate", "evaluate", "reference",
             "distance", "nll")
UNITS = {"train_segment": "training images", "train_adaptive_segment": "training images", "teacher": "images × NFE",
         "fit_rationale": "images × NFE", "generate": "images × NFE", "evaluate": "images",
         "reference": "images × NFE", "distance": "images × NFE", "nll": "images × NFE"}
BILL_OUT = "IED_BILL_OUT"  # a JSON path: the Snakefile writes its bill there (how `ied cost` reads a dry run's)


@dataclass(frozen=True)
class Throughput:
    """Rates of one GPU: training images/s, sampler NFE/s, evaluated images/s, likelihood NFE/s (an NFE of the
    likelihood is a forward and a vector–Jacobian product) and the expected NFE of one likelihood solve per image."""

    train_images_per_s: float
    nfe_per_s: float
    eval_images_per_s: float
    nll_nfe_per_s: float
    nll_nfe_per_image: float
    source: str


# The paper's A100 figures: ≈ 593 training images/s at batch 128 and ≈ 2,800 NFE/s sampling its U-Net. Not in the
# paper, assumed and stated: Inception features at 2,000 images/s, a likelihood NFE at a third of the sampling
# rate, 200 NFE per image at score_sde's tolerances.
PAPER_A100 = Throughput(593.0, 2800.0, 2000.0, 2800.0 / 3, 200.0,
                        "the paper's A100 figures (593 training images/s, 2,800 NFE/s; assumed: 2,000 evaluated "
                        "images/s, likelihood NFE at a third of that rate, 200 per image)")


class CostError(ValueError):
    """A throughput file that cannot be read, or a budget the run exceeds; the message is one line."""


def _rate(value: Any, where: str, path: Path) -> float | None:
    """A measured rate: a positive finite number (None: not measured)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise CostError(f"{path}: {where} is {value!r}, not a positive finite rate")
    return float(value)


def _best(entries: Any, key: str, rate, path: Path) -> float | None:
    """The highest rate of a list of measurements, out-of-memory ones left out."""
    if not isinstance(entries, list):
        raise CostError(f"{path}: {key} is not a list of measurements")
    values = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise CostError(f"{path}: {key}[{i}] is not a measurement")
        if not entry.get("out_of_memory"):
            values += [v for v in rate(entry, f"{key}[{i}]") if v is not None]
    return max(values, default=None)


def _section(report: Mapping[str, Any], key: str, path: Path) -> Mapping[str, Any]:
    value = report.get(key) or {}
    if not isinstance(value, Mapping):
        raise CostError(f"{path}: {key} is not a mapping")
    return value


def read_throughput(path: str | Path) -> Throughput:
    """The rates in a JSON `ied bench` wrote (its best mode and batch), the paper's where it measured none. Every
    rate given must be a positive finite number."""
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CostError(f"{path}: not a JSON file of `ied bench` ({type(err).__name__})") from None
    if not isinstance(report, Mapping) or not any(isinstance(report.get(k), list) for k in ("training", "sampling")):
        raise CostError(f"{path}: no training or sampling measurements (write it with `python -m ied bench`)")
    train = _best(report.get("training") or [], "training", lambda e, at: [
        _rate(e.get("images_per_s"), f"{at}.images_per_s", path)], path)
    sample = _best(report.get("sampling") or [], "sampling", lambda e, at: [
        _rate(v.get("nfe_per_s"), f"{at}.{k}.nfe_per_s", path) for k, v in e.items() if isinstance(v, Mapping)], path)
    if train is None and sample is None:
        raise CostError(f"{path}: no usable training images/s or sampling NFE/s in it")
    features = _section(report, "features", path)
    extractor = next((k for k in (INCEPTION, DIGITS_CNN) if k in features), None)  # per extractor
    evaluated = _rate(_section(features, extractor, path).get("images_per_s"), f"features.{extractor}.images_per_s",
                      path) if extractor else None
    nll = _section(report, "nll", path)
    nll_images = _rate(nll.get("images_per_s"), "nll.images_per_s", path)
    nll_nfe = _rate(nll.get("nfe_per_image"), "nll.nfe_per_image", path)
    default = PAPER_A100
    return Throughput(train or default.train_images_per_s, sample or default.nfe_per_s,
                      evaluated or default.eval_images_per_s,
                      nll_images * nll_nfe if nll_images and nll_nfe else
                      (sample / 3 if sample else default.nll_nfe_per_s),
                      nll_nfe or default.nll_nfe_per_image,
                      f"ied bench on {report.get('device', 'an unnamed device')} (preset {report.get('preset')!r}, "
                      f"{path.name})")


def configured_throughput(config: Mapping[str, Any]) -> Throughput:
    """`budget.throughput`'s rates, else the paper's A100 figures."""
    path = config["budget"]["throughput"]
    return read_throughput(path) if path else PAPER_A100


@dataclass(frozen=True)
class Job:
    """One GPU job of the DAG: its rule, primary output (relative to the working directory) and work."""

    rule: str
    output: str
    work: float


def jobs(config: Mapping[str, Any], throughput: Throughput) -> list[Job]:
    """Every GPU job the config's DAG holds, with its work in the rule's unit (UNITS)."""
    root = layout.experiment_root(config)
    out: list[Job] = []
    train = config["train"]
    adaptive = specs.adaptive_models(config)
    for model in layout.trained_models(config):
        rule = "train_adaptive_segment" if model in adaptive else "train_segment"
        for step in layout.checkpoint_steps(config):
            out.append(Job(rule, f"{root}/{layout.CHECKPOINT.format(train=model, step=step)}",
                           train["checkpoint_every"] * train["batch_size"]))
    for path, spec in layout.teachers(config).items():
        out.append(Job("teacher", f"{root}/{path}", spec["pilot"] * teacher_calls()))
    for name, spec in specs.fitted_rationales(config).items():
        out.append(Job("fit_rationale", f"{root}/{layout.SCHEDULE.format(rationale=name)}", fit_work(spec)))
    for cell in layout.cells(config):
        entry = specs.sampler_entry(config, cell.sampler)
        out.append(Job("generate", f"{root}/{layout.cell_path(layout.SAMPLES, cell)}",
                       cell.n * nfe(entry["sampler"], entry["steps"], entry.get("options"))))
        out.append(Job("evaluate", f"{root}/{layout.cell_path(layout.METRIC_ROW, cell)}", cell.n))
    for path, spec in layout.references(config).items():  # Heun at S and 2S steps
        out.append(Job("reference", f"{root}/{path}", spec["images"] * (6 * spec["steps"] - 2)))
    for path, group in layout.distance_groups(config).items():  # each cell's sampler on the reference's images
        entries = [specs.sampler_entry(config, cell.sampler) for cell in group]
        out.append(Job("distance", f"{root}/{path}", config["nfe_sweep"]["reference_images"]
                       * sum(nfe(e["sampler"], e["steps"], e.get("options")) for e in entries)))
    nll = config["nll"]
    if "n_images" in nll:
        info = DATASETS[config["dataset"]["name"]]
        images = info.sizes[info.reference_split] if nll["n_images"] == "all" else nll["n_images"]
        for model in layout.models(config):
            for step in layout.nll_steps(config, model):
                out.append(Job("nll", f"{root}/{layout.NLL.format(train=model, step=step)}",
                               images * nll["probes"] * throughput.nll_nfe_per_image))
    return out


def hours(job: Job, throughput: Throughput) -> float:
    """GPU-hours of one job: its work over the rule's rate."""
    rate = {"train_segment": throughput.train_images_per_s, "train_adaptive_segment": throughput.train_images_per_s,
            "generate": throughput.nfe_per_s,
            "teacher": throughput.nfe_per_s, "fit_rationale": throughput.nfe_per_s,
            "reference": throughput.nfe_per_s, "distance": throughput.nfe_per_s,
            "evaluate": throughput.eval_images_per_s, "nll": throughput.nll_nfe_per_s}[job.rule]
    return job.work / rate / 3600


def dag_plan(dag: Any) -> dict[str, bool]:
    """Snakemake's own decision, from the DAG it built for this invocation: every job's outputs, True where the job
    will run (outdated, missing, or forced by --forcerun, --forceall or -R)."""
    to_run = set(dag.needrun_jobs())
    return {str(path): job in to_run for job in dag.jobs for path in job.output}


def preflight(config: Mapping[str, Any], throughput: Throughput, dag: Any, out: str | None = None) -> list[dict]:
    """The bill of what Snakemake's DAG will run, its line printed (and its rows written as JSON to `out`, for
    `ied cost`): what the Snakefile does once the DAG is built."""
    import sys

    from ied.io import write_text

    rows = bill(config, throughput, dag_plan(dag))
    print(line(rows, throughput, config), file=sys.stderr)
    if out:
        write_text(out, json.dumps({"rows": rows, "throughput": throughput.source}))
    return rows


def dry_run(snakefile: str | Path, workdir: str | Path, configfiles: Iterable[str], config_args: Iterable[str],
            out: str | Path) -> tuple[list[dict], str]:
    """The bill a `snakemake -n` of this config prints, as rows (and the throughput's source): the Snakefile writes
    it to `out` when BILL_OUT names it."""
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(workdir), "-n", "--quiet", "all"]
    if configfiles:
        command += ["--configfile", *configfiles]
    if config_args:
        command += ["--config", *config_args]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, BILL_OUT: str(out)},
                            cwd=workdir, timeout=3600)
    if result.returncode != 0 or not Path(out).is_file():
        tail = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise CostError(f"snakemake -n failed: {tail}")
    bill = json.loads(Path(out).read_text())
    return bill["rows"], bill["throughput"]


def bill(config: Mapping[str, Any], throughput: Throughput, plan: Mapping[str, bool] | None = None) -> list[dict]:
    """Per GPU rule: jobs, work and GPU-hours, done and to do (`plan`: Snakemake's, None: all to do). A job of the
    layout that the plan does not mention is not part of this invocation (another target) and is left out."""
    rows = {rule: {"rule": rule, "unit": UNITS[rule], "jobs_done": 0, "jobs_to_do": 0, "work_done": 0.0,
                   "work_to_do": 0.0, "gpu_hours_done": 0.0, "gpu_hours_to_do": 0.0} for rule in GPU_RULES}
    for job in jobs(config, throughput):
        if plan is not None and job.output not in plan:
            continue
        part = "to_do" if plan is None or plan[job.output] else "done"
        row = rows[job.rule]
        row[f"jobs_{part}"] += 1
        row[f"work_{part}"] += job.work
        row[f"gpu_hours_{part}"] += hours(job, throughput)
    total = {"rule": "total", "unit": ""}
    for key in ("jobs_done", "jobs_to_do", "gpu_hours_done", "gpu_hours_to_do"):
        total[key] = sum(r[key] for r in rows.values())
    return list(rows.values()) + [{**total, "work_done": None, "work_to_do": None}]  # JSON has no NaN


def caveat(config: Mapping[str, Any], throughput: Throughput) -> str:
    """What the default rates do not know: a published network costs more per evaluation than the paper's U-Net."""
    if throughput is PAPER_A100 and layout.pretrained_models(config):
        return (" (the paper's U-Net rates: a published EDM network costs 3.7× (CIFAR-10) to 19× (ADM) its FLOPs per "
                "evaluation; measure with `ied bench --preset edm-…` and set budget.throughput)")
    return ""


def line(rows: list[dict], throughput: Throughput, config: Mapping[str, Any] | None = None) -> str:
    """The one line every snakemake invocation prints before any job."""
    total = rows[-1]
    return (f"to run: {total['jobs_to_do']} GPU jobs, ≈ {total['gpu_hours_to_do']:,.1f} GPU-hours at "
            f"{throughput.source}; done: {total['jobs_done']} jobs, {total['gpu_hours_done']:,.1f} GPU-hours"
            + (caveat(config, throughput) if config is not None else ""))


def check_budget(rows: list[dict], budget: float | None, throughput: Throughput) -> None:
    """CostError when the GPU-hours to do exceed the budget, naming the three largest contributors."""
    if budget is None or rows[-1]["gpu_hours_to_do"] <= budget:
        return
    largest = sorted(rows[:-1], key=lambda r: r["gpu_hours_to_do"], reverse=True)[:3]
    parts = ", ".join(f"{r['rule']} × {r['jobs_to_do']} ({r['gpu_hours_to_do']:,.1f} h)" for r in largest
                      if r["jobs_to_do"])
    raise CostError(f"config key 'budget.gpu_hours': this run needs ≈ {rows[-1]['gpu_hours_to_do']:,.1f} GPU-hours "
                    f"at {throughput.source}, over the budget of {budget:,g}; the largest: {parts}")


def markdown(rows: list[dict], throughput: Throughput, title: str) -> str:
    """The bill as a Markdown table."""
    def work(v: float | None) -> str:
        return "" if v is None else f"{v:,.0f}"

    def gpu_hours(v: float) -> str:
        return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}" if v >= 1 else f"{v:.3f}"

    lines = [f"## {title}", "", f"Throughput: {throughput.source}.", "",
             "| rule | unit | jobs done | jobs to do | work done | work to do | GPU-hours done | GPU-hours to do |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['rule']} | {r['unit']} | {r['jobs_done']} | {r['jobs_to_do']} | {work(r['work_done'])} | "
              f"{work(r['work_to_do'])} | {gpu_hours(r['gpu_hours_done'])} | {gpu_hours(r['gpu_hours_to_do'])} |"
              for r in rows]
    return "\n".join(lines) + "\n"
