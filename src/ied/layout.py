"""The experiment's cells, output paths and artefact names: the one definition the rules and figures read.

Patterns are relative to the experiment folder `results/<experiment>/` and use the Snakemake wildcard
names, so a rule's output is `f"{root}/{SAMPLES}"` and a figure finds a grid with `cell_path(GRID, cell)`.
Torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ied import specs

RESULTS = "results"
DATA = "data/{split}.npz"
SCHEDULE = "schedules/{rationale}.parquet"
CHECKPOINT = "checkpoints/{train}/ckpt-{step}.pt"
CELL = "{train}/{step}/{sample}/{sampler}/seed{seed}"
CELL_JOB = "{train}-{step}-{sample}-{sampler}-seed{seed}"  # a cell's log and benchmark file name
SAMPLES = f"samples/{CELL}.npz"
GRID = f"grids/{CELL}.png"
METRIC_ROW = f"metrics/rows/{CELL}.parquet"
METRICS = "metrics.parquet"
EVALUATOR = "evaluator/digits-cnn.pt"
FIDELITY_CACHE = "evaluator/fidelity-cache"
REPORT = "report.md"
LOG = "logs/{rule}/{job}.log"
JSON_LOG = "logs/{rule}/{job}.jsonl"
BENCHMARK = "benchmarks/{rule}/{job}.tsv"
TABLE_FORMATS = ("parquet", "md", "tex")
FIGURE_FORMATS = ("png", "pdf")
TABLES = ("fid_is", "fid_std")
FIGURES = ("fig1_rationales", "fig2_marginals", "fig3_fid_over_training", "fig4_is_over_training",
           "fig5_sigma_n_ablation", "fig8_sample_grids", "paper_comparison")
NAME_PATTERN = r"[A-Za-z][A-Za-z0-9_.-]*"  # rationale and sampler names: one path component each


@dataclass(frozen=True)
class Cell:
    """One generate+evaluate job: a checkpoint sampled with one schedule and sampler for one seed set."""

    train: str
    step: int
    sample: str
    sampler: str
    seed_set: int

    def wildcards(self) -> dict[str, Any]:
        return {"train": self.train, "step": self.step, "sample": self.sample, "sampler": self.sampler,
                "seed": self.seed_set}


def experiment_root(config: Mapping[str, Any]) -> str:
    return f"{RESULTS}/{config['experiment']}"


def cell_path(pattern: str, cell: Cell) -> str:
    """A per-cell pattern (SAMPLES, GRID, METRIC_ROW) filled in for one cell."""
    return pattern.format(**cell.wildcards())


def checkpoint_steps(config: Mapping[str, Any]) -> list[int]:
    """Every checkpoint the training writes: multiples of checkpoint_every up to total_steps."""
    train = config["train"]
    return list(range(train["checkpoint_every"], train["total_steps"] + 1, train["checkpoint_every"]))


def evaluated_steps(config: Mapping[str, Any]) -> list[int]:
    """The checkpoints that are sampled and scored."""
    wanted = config["sample"]["checkpoints"]
    return checkpoint_steps(config) if wanted == "all" else sorted(wanted)


def ablation_step(config: Mapping[str, Any]) -> int:
    step = config["ablation"]["checkpoint"]
    return checkpoint_steps(config)[-1] if step == "last" else int(step)


def cells(config: Mapping[str, Any]) -> list[Cell]:
    """Training rationale × evaluated checkpoint × sampling rationale × sampler × seed set, plus the ablation."""
    sample = config["sample"]
    out = [Cell(t, step, s, sampler, k) for t in config["train"]["rationales"] for step in evaluated_steps(config)
           for s in sample["rationales"] for sampler in sample["samplers"] for k in range(sample["seed_sets"])]
    ablation = config["ablation"]
    out += [Cell(ablation["train_rationale"], ablation_step(config), name, ablation["sampler"], 0)
            for name in specs.ablation_rationales(config)]
    return list(dict.fromkeys(out))


def tables() -> list[str]:
    return [f"tables/{name}.{ext}" for name in TABLES for ext in TABLE_FORMATS]


def figures() -> list[str]:
    return [f"figures/{name}.{ext}" for name in FIGURES for ext in FIGURE_FORMATS]
