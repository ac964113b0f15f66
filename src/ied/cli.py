"""`ied <command>`: the thin entry points the Snakemake rules call, with explicit input and output paths.

Specs arrive resolved (ied.specs) as JSON; run-time settings (devices, batch sizes, log intervals) arrive
as their own flags. A known failure — a corrupt or mismatched file, bad data, no CUDA, a non-finite result,
a full disk — ends the job with one line on stderr naming the file or key, and exit status 1.
"""
from __future__ import annotations

import argparse
import errno
import json
import math
import sys

from ied.nll import ESTIMATORS, MAX_NFE


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line on stderr (exit status 2), like every other known failure."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message}\n")


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from None


def _flag(text: str) -> bool:
    return text.lower() in ("1", "true", "yes")


def _integer(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _n_images(text: str) -> int | None:
    return None if text == "all" else _integer(1)(text)


POSITIVE, COUNT = _integer(1), _integer(0)


def _shape(text: str) -> tuple[int, ...]:
    """'3,32,32' → (3, 32, 32)."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected C,H,W, got {text!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive numbers C,H,W, got {text!r}")
    return shape


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The one parser; `bench`'s options (which import torch) are added only when it is the command."""
    parser = _Parser(prog="ied", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _job_commands(sub)
    _summary_commands(sub, with_bench_options=command == "bench")
    return parser


def _job_commands(sub: argparse._SubParsersAction) -> None:
    """The subcommands the pipeline's jobs run."""
    _data_commands(sub)
    _training_commands(sub)
    _sampling_commands(sub)
    _scoring_commands(sub)


def _data_commands(sub: argparse._SubParsersAction) -> None:
    """Preparing a dataset split, tabulating a schedule."""
    p = sub.add_parser("prepare", help="convert a dataset split to the prepared .npz format")
    p.add_argument("--dataset", required=True, help="a dataset of ied.data.DATASETS")
    p.add_argument("--split", required=True, help="the split to prepare (train, test, val)")
    p.add_argument("--out", required=True, help="the prepared .npz to write")
    p.add_argument("--data-root", default="", help="folder with the upstream files ('' for digits)")
    p.add_argument("--download", type=_flag, default=False,
                   help="fetch the upstream files first (needs internet; dataset.download)")
    p.add_argument("--verify", type=_flag, default=True, help="check torchvision's md5s (CIFAR-10)")
    p.add_argument("--max-images", type=COUNT, default=0, help="seeded subset (0: all)")

    p = sub.add_parser("tabulate", help="write a rationale's schedule table as Parquet")
    p.add_argument("--spec", type=_json, required=True, help="resolved rationale spec (JSON)")
    p.add_argument("--name", required=True, help="the rationale's name (stored with the table)")
    p.add_argument("--out", required=True, help="the Parquet schedule table to write")
    p.add_argument("--n", type=_integer(2), default=1001, help="grid points in t")


def _training_commands(sub: argparse._SubParsersAction) -> None:
    """Training a model's segment, the digits evaluator, importing a published network."""
    p = sub.add_parser("train", help="train one segment, start → end")
    p.add_argument("--spec", type=_json, required=True, help="resolved training spec (JSON)")
    p.add_argument("--data", required=True, help="the prepared training split")
    p.add_argument("--from-step", type=COUNT, required=True, help="the step the segment starts from (0: a new model)")
    p.add_argument("--to-step", type=POSITIVE, required=True,
                   help="the step the segment ends at (its checkpoint's step)")
    p.add_argument("--resume", help="checkpoint written at --from-step (omit when it is 0)")
    p.add_argument("--out", required=True, help="the checkpoint to write")
    p.add_argument("--log-file", help="JSON-lines log")
    p.add_argument("--loss-table", help="Parquet: the segment's ε-loss per log-σ bin")
    p.add_argument("--density-table", help="Parquet: an adaptive training rationale's learned density at --to-step")
    p.add_argument("--log-every", type=POSITIVE, default=100, help="training steps between log lines")
    _runtime(p)
    p.add_argument("--gpus", type=COUNT, default=0, help="> 1: data-parallel ranks on this node (torchrun)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume from a checkpoint of another training spec")

    p = sub.add_parser("train-evaluator", help="train the digits CNN feature extractor")
    p.add_argument("--train", required=True, help="the prepared training split")
    p.add_argument("--test", required=True, help="the prepared test split")
    p.add_argument("--out", required=True, help="the evaluator checkpoint to write")
    p.add_argument("--min-accuracy", type=float, default=0.95, help="the test accuracy the CNN must reach")

    p = sub.add_parser("import-edm", help="a published EDM network pickle as a checkpoint, without running its code")
    p.add_argument("pickle", help="an NVlabs/edm network pickle (edm-*.pkl)")
    p.add_argument("--out", required=True, help="the checkpoint to write")
    p.add_argument("--step", type=COUNT, default=0, help="the checkpoint's step (the pipeline's fixed step: 0)")
    p.add_argument("--expect-sha256", default="", help="the file's sha256 or its leading digits ('' to skip)")
    p.add_argument("--expect-shape", type=_shape, help="C,H,W of the dataset's images")
    p.add_argument("--expect-classes", type=COUNT, help="the dataset's classes (an unconditional network fits any)")


def _sampling_commands(sub: argparse._SubParsersAction) -> None:
    """Sampling a checkpoint."""
    p = sub.add_parser("generate", help="sample images from a checkpoint")
    p.add_argument("--checkpoint", required=True, help="the checkpoint to sample")
    p.add_argument("--spec", type=_json, required=True, help="resolved sampling spec (JSON)")
    p.add_argument("--n-samples", type=POSITIVE, required=True, help="images to generate")
    p.add_argument("--seed-set", type=COUNT, default=0, help="the seed set (each image's noise is keyed by it)")
    p.add_argument("--expect-step", type=COUNT, help="refuse a checkpoint of another step")
    p.add_argument("--expect-config-hash", help="refuse a checkpoint of another training spec")
    p.add_argument("--batch-size", type=POSITIVE, default=256, help="images per denoiser batch")
    p.add_argument("--shard-size", type=POSITIVE, default=1000, help="images per resumable shard")
    _runtime(p)
    p.add_argument("--out", required=True, help="the samples .npz to write")
    p.add_argument("--grid", help="a 10×10 sample grid PNG to write")
    p.add_argument("--log-file", help="JSON-lines log")
    p.add_argument("--rationale-table", default="",
                   help="a fitted or learned sampling rationale's table (fit-rationale's or learn-rationale's output)")

    p = sub.add_parser("teacher", help="a fit's teacher trajectory under a checkpoint (ied.fitting) → .npz")
    p.add_argument("--checkpoint", required=True, help="the checkpoint whose flow the teacher follows")
    p.add_argument("--spec", type=_json, required=True, help="the teacher's base and pilot (JSON)")
    p.add_argument("--expect-step", type=COUNT, help="refuse a checkpoint of another step")
    p.add_argument("--expect-config-hash", help="refuse a checkpoint of another training spec")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out", required=True, help="the teacher file to write")
    p.add_argument("--log-file", help="JSON-lines log")

    p = sub.add_parser("fit-rationale", help="fit a rationale to a checkpoint (ied.fitting) → its schedule table")
    p.add_argument("--checkpoint", required=True, help="the checkpoint to fit to")
    p.add_argument("--teacher", required=True, help="its teacher file (the teacher job's output)")
    p.add_argument("--spec", type=_json, required=True, help="resolved fitted-rationale spec (JSON)")
    p.add_argument("--name", required=True, help="the rationale's name (stored with the table)")
    p.add_argument("--expect-step", type=COUNT, help="refuse a checkpoint of another step")
    p.add_argument("--expect-config-hash", help="refuse a checkpoint of another training spec")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out", required=True, help="the Parquet schedule table to write")
    p.add_argument("--log-file", help="JSON-lines log")

    p = sub.add_parser("learn-rationale",
                       help="an adaptive model's learned density at a checkpoint → its schedule table")
    p.add_argument("--density", required=True, help="the training segment's density table (train --density-table)")
    p.add_argument("--spec", type=_json, required=True, help="resolved learned-rationale spec (JSON)")
    p.add_argument("--name", required=True, help="the rationale's name (stored with the table)")
    p.add_argument("--out", required=True, help="the Parquet schedule table to write")


def _scoring_commands(sub: argparse._SubParsersAction) -> None:
    """Scoring a samples file, the likelihood of a checkpoint."""
    p = sub.add_parser("evaluate", help="FID/IS/KID of a samples file → one Parquet row")
    p.add_argument("--samples", required=True, help="the samples .npz to score")
    p.add_argument("--reference", default="", help="a prepared split ('' with --reference-statistics)")
    p.add_argument("--reference-statistics", default="", help="an .npz with mu and sigma, instead of a split")
    p.add_argument("--expect-shape", type=_shape, help="C,H,W of the dataset's images (with statistics)")
    p.add_argument("--extractor", required=True, help="the feature extractor (ied.data.EXTRACTORS)")
    p.add_argument("--weights", required=True, help="the extractor's weights file")
    p.add_argument("--sha256", default="", help="expected sha256 (prefix) of the weights ('' to skip)")
    p.add_argument("--out", required=True, help="the metrics row (Parquet) to write")
    p.add_argument("--cell", type=_json, default={}, help="the cell's names, stored in the row (JSON)")
    p.add_argument("--cache-root", help="folder of the cached reference features")
    p.add_argument("--bootstrap", type=COUNT, default=0, help="resamples of each score's 95 %% interval (0: none)")
    p.add_argument("--batch-size", type=POSITIVE, default=256, help="images per feature batch")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")

    p = sub.add_parser("reference", help="the probability-flow solution of a set's first images (ied.reference)")
    p.add_argument("--checkpoint", required=True, help="the checkpoint whose flow is solved")
    p.add_argument("--spec", type=_json, required=True, help="domain, images, steps, set size and seed set (JSON)")
    p.add_argument("--expect-step", type=COUNT, help="refuse a checkpoint of another step")
    p.add_argument("--expect-config-hash", help="refuse a checkpoint of another training spec")
    p.add_argument("--batch-size", type=POSITIVE, default=256, help="images per solve")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out", required=True, help="the reference file to write")

    p = sub.add_parser("distance", help="deterministic cells against the probability-flow solution → a row each")
    p.add_argument("--checkpoint", required=True, help="the cells' checkpoint")
    p.add_argument("--reference", required=True, help="their reference (the reference job's output)")
    p.add_argument("--cells", type=_json, required=True,
                   help="the cells: a JSON list of {cell: its names, spec: its resolved sampling spec}")
    p.add_argument("--tables", nargs="*", default=[], help="name=path of each fitted or learned rationale's table")
    p.add_argument("--n-samples", type=POSITIVE, required=True, help="the cells' set size (their labels follow it)")
    p.add_argument("--seed-set", type=COUNT, default=0, help="the cells' seed set")
    p.add_argument("--expect-step", type=COUNT, help="refuse a checkpoint of another step")
    p.add_argument("--expect-config-hash", help="refuse a checkpoint of another training spec")
    p.add_argument("--batch-size", type=POSITIVE, default=256, help="images per batch")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default="auto", help="auto (bf16 on CUDA), bf16 or fp32, as the cell's")
    p.add_argument("--out", required=True, help="the distance row (Parquet) to write")

    p = sub.add_parser("nll", help="bits/dim of a prepared split under a checkpoint (probability-flow ODE)")
    p.add_argument("--checkpoint", required=True, help="the checkpoint to score")
    p.add_argument("--data", required=True, help="a prepared split (the held-out split in the pipeline)")
    p.add_argument("--n-images", type=_n_images, default=None, help="a seeded subset of this many images, or all")
    p.add_argument("--probes", type=POSITIVE, default=1, help="Hutchinson probes per image")
    p.add_argument("--estimator", default="rademacher", choices=ESTIMATORS, help="the divergence estimator")
    p.add_argument("--rtol", type=_positive_float, default=1e-5, help="RK45's relative tolerance")
    p.add_argument("--atol", type=_positive_float, default=1e-5, help="RK45's absolute tolerance")
    p.add_argument("--max-nfe", type=POSITIVE, default=MAX_NFE, help="denoiser evaluations per solve, at most")
    p.add_argument("--expect-step", type=COUNT, help="refuse a checkpoint of another step")
    p.add_argument("--expect-config-hash", help="refuse a checkpoint of another training spec")
    p.add_argument("--batch-size", type=POSITIVE, default=128, help="images per ODE batch")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out", required=True, help="the NLL table (Parquet) to write")



def _summary_commands(sub: argparse._SubParsersAction, with_bench_options: bool = False) -> None:
    """The subcommands that summarise results, check configs and measure."""
    p = sub.add_parser("aggregate", help="concatenate metric rows, with the cells' distances from the flow")
    p.add_argument("--out", required=True, help="the metrics table to write")
    p.add_argument("--rows", nargs="+", required=True, help="metric rows (Parquet)")
    p.add_argument("--distances", nargs="*", default=[], help="distance rows (Parquet) of deterministic cells")

    p = sub.add_parser("tables", help="Tables 1–4 from the metrics")
    p.add_argument("--metrics", required=True, help="the metrics table (ied.layout.METRICS)")
    p.add_argument("--nll", nargs="*", default=[], help="NLL tables (ied.layout.NLL)")
    p.add_argument("--experiment", type=_json, required=True,
                   help="what the tables receive (JSON of ied.layout.table_inputs)")
    p.add_argument("--outdir", required=True, help="folder of the tables")

    p = sub.add_parser("figures", help="Figures 1–9 from tables, metrics and grids")
    p.add_argument("--metrics", required=True, help="the metrics table (ied.layout.METRICS)")
    p.add_argument("--experiment", type=_json, required=True,
                   help="what the figures receive (JSON of ied.layout.figure_inputs)")
    p.add_argument("--schedules", nargs="+", required=True, help="schedule tables (ied.layout.SCHEDULE)")
    p.add_argument("--losses", nargs="*", default=[], help="training segments' loss tables (ied.layout.LOSS)")
    p.add_argument("--densities", nargs="*", default=[],
                   help="adaptive training rationales' density tables (ied.layout.DENSITY)")
    p.add_argument("--nll", nargs="*", default=[], help="NLL tables (ied.layout.NLL)")
    p.add_argument("--root", required=True, help="the experiment folder (sample grids are found there)")
    p.add_argument("--outdir", required=True, help="folder of the figures")

    p = sub.add_parser("report", help="a Markdown summary of tables and figures")
    p.add_argument("--tables", nargs="+", required=True, help="tables (.md) to include")
    p.add_argument("--figures", nargs="+", required=True, help="figures (.png) to include")
    p.add_argument("--out", required=True, help="the Markdown report to write")

    p = sub.add_parser("cost", help="the GPU bill of a config: jobs, work and GPU-hours, done and to do")
    p.add_argument("--configfile", nargs="+", default=[], help="as snakemake's (default: config/config.yaml)")
    p.add_argument("--config", nargs="+", default=[], help="key=value overrides, as snakemake's")
    p.add_argument("--throughput", help="a JSON `ied bench` wrote on the target GPU (default: budget.throughput, "
                                        "else the paper's A100 figures)")
    p.add_argument("--directory", "-d", default=".", help="snakemake's working directory (where results/ is)")
    p.add_argument("--table", help="also write the bill as TABLE.md and TABLE.parquet")

    p = sub.add_parser("check-config", help="validate a pipeline config file")
    p.add_argument("configfiles", nargs="+", help="config files, merged in order")

    p = sub.add_parser("bench", help="throughput, overhead, memory and accuracy numbers as JSON (ied.bench)")
    if with_bench_options:
        from ied.bench import add_arguments
        add_arguments(p)


def _runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default="auto", help="auto (bf16 on CUDA), bf16 or fp32")
    p.add_argument("--compile", type=_flag, default=False, help="torch.compile the U-Net")


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    args = _parser(argv[0] if argv else None).parse_args(argv)
    if args.command == "train" and args.gpus > 1:
        from ied import distributed
        if not distributed.inside_ranks():
            return distributed.launch(argv, args.gpus)
    try:
        return COMMANDS[args.command](args) or 0
    except Exception as err:  # noqa: BLE001 — known failures become one line; anything else keeps its traceback
        message = _known(err)
        _report_rank(message or f"{type(err).__name__}: {err}")
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 1


def _report_rank(message: str) -> None:
    """Inside a multi-GPU job, leave this rank's error for the launcher to print last (ied.distributed.launch)."""
    import os
    if "WORLD_SIZE" in os.environ:
        from ied.distributed import report_rank_error
        report_rank_error(message)


def _known(err: Exception) -> str | None:
    """The one-line message of an expected failure, or None for a bug (which keeps its traceback)."""
    from ied.checkpoints import CheckpointError
    from ied.config import ConfigError
    from ied.cost import CostError
    from ied.data import DataError
    from ied.device import DeviceError
    from ied.adaptive import AdaptiveError
    from ied.fitting import FittingError
    from ied.generate import GenerationError
    from ied.io import CorruptFileError, quarantine
    from ied.metrics import MetricsError
    from ied.nll import NLLError
    from ied.pretrained import PretrainedError
    from ied.reference import ReferenceError
    from ied.rationales import RationaleError
    from ied.samplers import OptionError, ScheduleError
    from ied.train import TrainingError

    if isinstance(err, CorruptFileError):
        # A file this pipeline wrote is damaged: move it aside so the next run regenerates it.
        return f"{err}. Moved it to {quarantine(err.path)}; rerun the pipeline to regenerate it."
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return f"no space left on device writing {err.filename or 'an output'}; free space and rerun"
    if isinstance(err, OSError) and err.filename is not None:  # a read-only folder, a missing mount, a quota
        return f"{err.filename}: {err.strerror or err}"
    known = (AdaptiveError, CheckpointError, ConfigError, CostError, DataError, DeviceError, FittingError, GenerationError,
             MetricsError, NLLError,
             PretrainedError, RationaleError, OptionError, ReferenceError, ScheduleError, TrainingError)
    return str(err) if isinstance(err, known) else None


def _prepare(a):
    from ied.data import prepare
    data = prepare(a.dataset, a.split, a.out, data_root=a.data_root or None, download=a.download, verify=a.verify,
                   max_images=a.max_images or None)
    print(f"{a.out}: {len(data)} images {data.images.shape[1:]}", file=sys.stderr)


def _tabulate(a):
    from ied.rationales import build, tabulate
    tabulate(build(a.name, a.spec), n=a.n).to_parquet(a.out)


def _train(a):
    from ied.train import train
    train(a.spec, a.from_step, a.to_step, data_path=a.data, checkpoint_in=a.resume, checkpoint_out=a.out,
          log_path=a.log_file, loss_table=a.loss_table, density_table=a.density_table, log_every=a.log_every,
          device=a.device, precision=a.precision, allow_config_change=a.allow_config_change)


def _train_evaluator(a):
    from ied.data import load_imageset
    from ied.metrics import train_digits_cnn
    accuracy = train_digits_cnn(load_imageset(a.train), load_imageset(a.test), a.out)
    print(json.dumps({"digits_cnn_test_accuracy": accuracy}), file=sys.stderr)
    if accuracy < a.min_accuracy:
        raise SystemExit(f"digits evaluator reached only {accuracy:.3f} test accuracy (< {a.min_accuracy})")


def _generate(a):
    from ied.generate import generate
    generate(a.checkpoint, a.spec, a.out, n_samples=a.n_samples, seed_set=a.seed_set, expect_step=a.expect_step,
             expect_config_hash=a.expect_config_hash, batch_size=a.batch_size, shard_size=a.shard_size, grid=a.grid,
             device=a.device, precision=a.precision, compile=a.compile, log_path=a.log_file,
             rationale_table=a.rationale_table or None)


def _teacher(a):
    from ied.fit import teacher_checkpoint
    info = teacher_checkpoint(a.checkpoint, a.spec, a.out, expect_step=a.expect_step,
                              expect_config_hash=a.expect_config_hash, device=a.device, log_path=a.log_file)
    print(json.dumps({k: info[k] for k in ("denoiser_evaluations", "seconds")}), file=sys.stderr)


def _fit_rationale(a):
    from ied.fit import fit_checkpoint
    info = fit_checkpoint(a.checkpoint, a.spec, a.name, a.out, a.teacher, expect_step=a.expect_step,
                          expect_config_hash=a.expect_config_hash, device=a.device, log_path=a.log_file)
    print(json.dumps({k: info.get(k) for k in ("denoiser_evaluations", "seconds", "levels", "pilot_error",
                                               "validation_error", "chosen")}), file=sys.stderr)


def _learn_rationale(a):
    from ied.adaptive import save_learned
    save_learned(a.density, a.spec, a.name, a.out)


def _evaluate(a):
    from ied.metrics import evaluate
    row = evaluate(a.samples, a.reference or None, a.extractor, a.weights, a.out, cell=a.cell, sha256=a.sha256 or None,
                   cache_root=a.cache_root, batch_size=a.batch_size, device=a.device,
                   reference_statistics=a.reference_statistics or None, expect_shape=a.expect_shape,
                   bootstrap=a.bootstrap)
    print(json.dumps({k: row[k] for k in ("fid", "isc_mean", "kid_mean", "degenerate")}), file=sys.stderr)


def _nll(a):
    from ied.nll import nll
    summary = nll(a.checkpoint, a.data, a.out, n_images=a.n_images, probes=a.probes, estimator=a.estimator,
                  rtol=a.rtol, atol=a.atol, batch_size=a.batch_size, device=a.device, expect_step=a.expect_step,
                  expect_config_hash=a.expect_config_hash, max_nfe=a.max_nfe)
    print(json.dumps(summary), file=sys.stderr)


def _import_edm(a):
    from ied.pretrained import import_edm
    summary = import_edm(a.pickle, a.out, step=a.step, expect_sha256=a.expect_sha256 or None,
                         expect_shape=a.expect_shape, expect_classes=a.expect_classes)
    print(json.dumps(summary), file=sys.stderr)


def _aggregate(a):
    from ied.io import atomic_path
    from ied.metrics import aggregate
    frame = aggregate(a.rows, a.distances)
    with atomic_path(a.out) as tmp:
        frame.to_parquet(tmp, index=False)


def _reference(a):
    from ied.reference import reference_checkpoint
    info = reference_checkpoint(a.checkpoint, a.spec, a.out, expect_step=a.expect_step,
                                expect_config_hash=a.expect_config_hash, device=a.device, batch_size=a.batch_size)
    print(json.dumps(info), file=sys.stderr)


def _distance(a):
    from ied.reference import distance
    tables = dict(entry.split("=", 1) for entry in a.tables)
    rows = distance(a.checkpoint, a.reference, a.cells, a.out, n_samples=a.n_samples, seed_set=a.seed_set,
                    expect_step=a.expect_step, expect_config_hash=a.expect_config_hash, tables=tables,
                    device=a.device, precision=a.precision, batch_size=a.batch_size)
    for row in rows:
        print(json.dumps(row), file=sys.stderr)


def _tables(a):
    from ied.tables import write_tables
    write_tables(a.metrics, a.experiment, a.outdir, a.nll)


def _figures(a):
    from ied.figures import write_figures
    write_figures(a.metrics, a.experiment, a.schedules, a.losses, a.root, a.outdir, a.nll, a.densities)


def _report(a):
    from ied.tables import write_report
    write_report(a.tables, a.figures, a.out)


def _cost(a):
    import json
    import tempfile
    from pathlib import Path

    import pandas as pd

    from ied import cost
    from ied.checks import load
    from ied.io import atomic_path, write_text
    overrides = a.config + ([f"budget={{throughput: {json.dumps(str(Path(a.throughput).resolve()))}}}"]
                            if a.throughput else [])
    config = load(a.configfile, overrides)  # a bad config is one line before snakemake runs
    snakefile = Path(__file__).resolve().parents[2] / "Snakefile"
    with tempfile.TemporaryDirectory() as tmp:
        configfiles = [str(Path(p).resolve()) for p in a.configfile]
        rows, source = cost.dry_run(snakefile, Path(a.directory).resolve(), configfiles, overrides,
                                    Path(tmp) / "bill.json")
    throughput = cost.configured_throughput(config)
    title = f"The bill of {config['experiment']} ({', '.join(a.configfile) or 'config/config.yaml'})"
    text = cost.markdown(rows, throughput, title)
    print(text)
    print(cost.line(rows, throughput, config), file=sys.stderr)
    if a.table:
        write_text(f"{a.table}.md", text)
        with atomic_path(f"{a.table}.parquet") as tmp:
            pd.DataFrame(rows).assign(throughput=source).to_parquet(tmp, index=False)


def _check_config(a):
    from ied.checks import load
    load(a.configfiles)  # the Snakefile's checks, the same function
    print("config ok", file=sys.stderr)


def _bench(a):
    from ied.bench import run
    return run(a)


COMMANDS = {"prepare": _prepare, "tabulate": _tabulate, "train": _train, "train-evaluator": _train_evaluator,
            "generate": _generate, "teacher": _teacher, "fit-rationale": _fit_rationale,
            "learn-rationale": _learn_rationale, "evaluate": _evaluate, "nll": _nll,
            "import-edm": _import_edm, "cost": _cost,
            "reference": _reference, "distance": _distance, "aggregate": _aggregate, "tables": _tables,
            "figures": _figures, "report": _report,
            "check-config": _check_config, "bench": _bench}

if __name__ == "__main__":
    sys.exit(main())
