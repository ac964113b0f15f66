# Config validation, job specs and paths: ied.checks checks, ied.specs resolves, ied.layout names.
#
# A job's identity is what determines its output: its params (resolved, label-free specs), its input files
# and its code. Run-time settings that do not change any output (log interval, device, precision, compile,
# batch and shard sizes, data_root) reach the jobs as Snakemake *resources*, which no rerun trigger watches.
import json
import os
import re
import shlex
import sys

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from ied import cost, layout, specs
from ied.checks import load
from ied.config import ConfigError, extractor, reference_split, resource
from ied.data import DATASETS
from ied.io import content_sha256

def _validated_config():
    """config/config.yaml applies only when no --configfile is given: a paper config replaces it rather than
    being merged into it. --config key=value (nested: key='{sub: value}') overrides either; the values are
    read again as typed YAML (Snakemake reads nested ones as strings)."""
    # Opening the data files and network files and hashing the Inception weights happens once, not in every
    # cluster job.
    return load(workflow.overwrite_configfiles, workflow.config_settings.config_args or [],
                deep=workflow.is_main_process)


try:
    _config = _validated_config()
except ConfigError as err:
    sys.exit(f"Config error: {err}")
config.clear()
config.update(_config)

# Every job (locally, or re-entered by the SLURM executor) runs `python -m ied` from this checkout's src/.
# (Snakemake formats the prefix like a shell command, hence the doubled braces.)
SRC = shlex.quote(str(Path(workflow.basedir) / "src"))
shell.prefix(f"set -euo pipefail; export PYTHONPATH={SRC}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ")
EXP = layout.experiment_root(config)
RATIONALES = specs.all_rationales(config)
FITTED = specs.fitted_rationales(config)  # made by fit_rationale jobs; every cell sampling one reads its table
TEACHERS = layout.teachers(config)  # made by teacher jobs, one per model, checkpoint, base and pilot of the fits
LEARNED = specs.learned_rationales(config)  # made by learned_rationale jobs from an adaptive model's density
ADAPTIVE = specs.adaptive_models(config)  # trained by train_adaptive_segment jobs, which also write the density
CELLS = layout.cells(config)
REFERENCES = layout.references(config)  # made by reference jobs, one per model, checkpoint, domain, set size and set
DISTANCES = layout.distance_groups(config)  # each reference's deterministic cells, measured by one distance job
EVERY = config["train"].get("checkpoint_every", 0)
EXTRACTOR = extractor(config)
REFERENCE = reference_split(config)  # None: FID against reference statistics (evaluate.reference_statistics)
DATASET = DATASETS[config["dataset"]["name"]]
IMAGE_SHAPE = ",".join(map(str, DATASET.shape))  # C,H,W: what generated or imported images must be
HELD_OUT = DATASET.reference_split  # the likelihood's images: the held-out split
ENV = "../../envs/ied.yaml"
CELL_JOB = layout.CELL_JOB  # one file name per cell for logs and benchmarks


def names_pattern(names):
    """A wildcard constraint matching exactly these names (none: nothing)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


def distance_tables(w):
    """The fitted or learned sampling rationales among a distance job's cells (their tables are its inputs)."""
    cells = DISTANCES[layout.DISTANCE.format(**w)]
    return sorted({c.sample for c in cells if c.sample in FITTED or c.sample in LEARNED})


def fitted_table(w):
    """A cell's fitted or learned sampling rationale's table (an input of its generate job), or none."""
    return [out(layout.SCHEDULE, rationale=w.sample)] if w.sample in FITTED or w.sample in LEARNED else []


wildcard_constraints:
    step=r"\d+",
    seed=r"\d+",
    n=r"\d+",
    split=names_pattern(DATASET.splits),
    train=layout.NAME_PATTERN,
    sample=layout.NAME_PATTERN,
    sampler=layout.SAMPLER_PATTERN,
    rationale=layout.NAME_PATTERN,


def out(pattern, **fields):
    """A path under results/<experiment>/ (ied.layout pattern, wildcards left for Snakemake unless given)."""
    return f"{EXP}/{pattern.format(**fields)}" if fields else f"{EXP}/{pattern}"


def log(rule_name, job, ext="log"):
    return out(layout.JSON_LOG if ext == "jsonl" else layout.LOG, rule=rule_name, job=job)


def bench(rule_name, job):
    return out(layout.BENCHMARK, rule=rule_name, job=job)


def res(rule_name):
    """The rule's cluster resources (config `resources.<rule>`, schema defaults filled in)."""
    return resource(config, rule_name)


def gpu_resources(rule_name, **settings):
    """A GPU rule's `resources:`: its GPUs, GPU model, memory, run time and CPUs (`resources.<rule>`), and its
    run-time settings, which no rerun trigger watches."""
    r = res(rule_name)
    return dict(gpu=r["gpus"], gpu_model=r["gpu_model"], mem_mb=r["mem_mb"], runtime=r["runtime"],
                cpus_per_task=r["cpus"], **settings)


def cell_paths(pattern):
    return [out(layout.cell_path(pattern, c)) for c in CELLS]


def caption(path):
    """The report caption of a table or figure: workflow/report/<stem>.rst (relative to rules/)."""
    return f"../report/{Path(path).stem}.rst"


def dumps(obj):
    """Compact, canonical JSON for command lines (quoted with :q in the shell commands)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def previous_checkpoint(w):
    start = int(w.step) - EVERY
    return [out(layout.CHECKPOINT, train=w.train, step=start)] if start > 0 else []


def extractor_weights(w):
    """The digits CNN is an output of this workflow; Inception weights are not an input (see WEIGHTS_SHA256)."""
    return out(layout.EVALUATOR) if EXTRACTOR == DATASETS["digits"].extractor else []


# Inception weights enter `evaluate` by their content: the full SHA-256 is a param (a new file reruns every
# evaluation), the path a resource (moving the same file reruns nothing), and how the config spells the expected
# digest (8 hex digits or 64) does not matter.
WEIGHTS = config["evaluate"]["feature_extractor_weights_path"] if EXTRACTOR != DATASETS["digits"].extractor else None
WEIGHTS_SHA256 = content_sha256(WEIGHTS) if WEIGHTS else ""
STATISTICS = config["evaluate"]["reference_statistics"]
STATISTICS_SHA256 = content_sha256(STATISTICS) if STATISTICS else ""
BOOTSTRAP = config["evaluate"]["bootstrap"]  # resamples of each score's interval (ied.metrics.intervals)


def nll_tables():
    return [out(layout.NLL, train=t, step=s) for t in layout.models(config) for s in layout.nll_steps(config, t)]


def density_tables():
    """Every segment's learned density of every adaptive model (the adaptive figure reads them)."""
    return [out(layout.DENSITY, train=t, step=s) for t in ADAPTIVE for s in layout.checkpoint_steps(config)]


def loss_tables():
    return [out(layout.LOSS, train=t, step=s) for t in layout.trained_models(config) for s in layout.checkpoint_steps(config)]
