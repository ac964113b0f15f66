# Config validation and the experiment's cross-product, built once in ied.pipeline.
import os
import sys

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from ied.config import load, merge, validate
from ied.pipeline import (
    ConfigError,
    all_rationales,
    cells,
    checkpoint_steps,
    dumps,
    extractor,
    reference_split,
    train_config,
)

# config/config.yaml (the embedded default) applies only when no --configfile is given: a paper config
# replaces it rather than being merged into it. --config key=value overrides either.
try:
    if not workflow.overwrite_configfiles:
        _config = merge(load([Path(workflow.basedir) / "config" / "config.yaml"], check=False), config)
    else:
        _config = config
    _config = validate(_config)
except ConfigError as err:
    sys.exit(f"Config error: {err}")
if _config.get("paper_results") and not Path(_config["paper_results"]).exists():
    _config["paper_results"] = str(Path(workflow.basedir) / _config["paper_results"])
config.clear()
config.update(_config)

# Every job (locally, or re-entered by the SLURM executor) runs `python -m ied` from this checkout's src/.
# (Snakemake formats the prefix like a shell command, hence the doubled braces.)
SRC = Path(workflow.basedir) / "src"
shell.prefix(f'set -euo pipefail; export PYTHONPATH="{SRC}${{{{PYTHONPATH:+:$PYTHONPATH}}}}"; ')
EXP = f"results/{config['experiment']}"
LOGS = f"{EXP}/logs"
RATIONALES = all_rationales(config)
CELLS = cells(config)
EVERY = config["train"]["checkpoint_every"]
EXTRACTOR = extractor(config)
REFERENCE = reference_split(config)
ENV = "../../envs/ied.yaml"
CELL = "{train}/{step}/{sample}/{sampler}/seed{seed}"
LOG_CELL = "{train}-{step}-{sample}-{sampler}-seed{seed}"

wildcard_constraints:
    step=r"\d+",
    seed=r"\d+",
    split=r"train|test|val",
    train=r"[A-Za-z][A-Za-z0-9_.-]*",
    sample=r"[A-Za-z][A-Za-z0-9_.-]*",
    sampler=r"[A-Za-z][A-Za-z0-9_.-]*",


def res(rule_name, key, default):
    """Per-rule cluster resources from config['resources'] (the slurm profile reads them)."""
    return config.get("resources", {}).get(rule_name, {}).get(key, default)


def cell_path(kind, ext):
    return [f"{EXP}/{kind}/{c.train}/{c.step}/{c.sample}/{c.sampler}/seed{c.seed_set}.{ext}" for c in CELLS]


METRIC_ROWS = cell_path("metrics/rows", "parquet")
TABLES = [
    f"{EXP}/tables/{name}.{ext}"
    for name in ["fid_is", "fid_std"]
    for ext in ["parquet", "md", "tex"]
]
FIGURES = [
    f"{EXP}/figures/{name}.{ext}"
    for name in [
        "fig1_rationales",
        "fig2_marginals",
        "fig3_fid_over_training",
        "fig4_is_over_training",
        "fig5_sigma_n_ablation",
        "fig8_sample_grids",
        "paper_comparison",
    ]
    for ext in ["png", "pdf"]
]
REPORT = f"{EXP}/report.md"


def previous_checkpoint(w):
    start = int(w.step) - EVERY
    return [f"{EXP}/checkpoints/{w.train}/ckpt-{start}.pt"] if start > 0 else []


def sampler_entry(w):
    return config["sample"]["samplers"][w.sampler]


def extractor_weights(w):
    if EXTRACTOR == "ied-digits-cnn":
        return f"{EXP}/evaluator/digits-cnn.pt"
    return config["evaluate"]["feature_extractor_weights_path"]


def parent(path):
    """Folder of an output (a lint-friendly way to pass output folders)."""
    return os.path.dirname(path)
