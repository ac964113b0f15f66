"""`ied <command>`: the thin entry points the Snakemake rules call, with explicit input and output paths."""
from __future__ import annotations

import argparse
import json
import sys


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ied", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="convert a dataset split to the prepared .npz format")
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--data-root")
    p.add_argument("--download", action="store_true")
    p.add_argument("--no-verify", action="store_true", help="skip torchvision's md5 checks (CIFAR-10)")
    p.add_argument("--max-images", type=int)

    p = sub.add_parser("tabulate", help="write a rationale's schedule table as Parquet")
    p.add_argument("--rationales", type=_json, required=True, help="the config's rationales mapping (JSON)")
    p.add_argument("--name", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=1001)

    p = sub.add_parser("train", help="train one segment, start → end")
    p.add_argument("--config", type=_json, required=True, help="training config (JSON)")
    p.add_argument("--data", required=True)
    p.add_argument("--start", type=int, required=True)
    p.add_argument("--end", type=int, required=True)
    p.add_argument("--resume", help="checkpoint written at --start (omit when --start is 0)")
    p.add_argument("--out", required=True)
    p.add_argument("--log")
    p.add_argument("--allow-config-change", action="store_true")

    p = sub.add_parser("train-evaluator", help="train the digits CNN feature extractor")
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--min-accuracy", type=float, default=0.95)

    p = sub.add_parser("generate", help="sample images from a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--rationale", type=_json, required=True, help="sampling rationale spec (JSON)")
    p.add_argument("--sampler", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--options", type=_json, default={})
    p.add_argument("--n-samples", type=int, required=True)
    p.add_argument("--seed-set", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--shard-size", type=int, default=1000, help="images per resumable shard")
    p.add_argument("--out", required=True)
    p.add_argument("--grid")
    p.add_argument("--meta", type=_json, default={})
    p.add_argument("--log")

    p = sub.add_parser("evaluate", help="FID/IS/KID of a samples file → one Parquet row")
    p.add_argument("--samples", required=True)
    p.add_argument("--reference", required=True)
    p.add_argument("--extractor", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--meta", type=_json, default={})
    p.add_argument("--cache-root")

    p = sub.add_parser("aggregate", help="concatenate metric rows")
    p.add_argument("--out", required=True)
    p.add_argument("rows", nargs="+")

    p = sub.add_parser("tables", help="Tables 1–4 from the metrics")
    p.add_argument("--metrics", required=True)
    p.add_argument("--config", type=_json, required=True)
    p.add_argument("--outdir", required=True)

    p = sub.add_parser("figures", help="Figures 1–9 from tables, metrics and grids")
    p.add_argument("--metrics", required=True)
    p.add_argument("--config", type=_json, required=True)
    p.add_argument("--schedules", nargs="+", required=True)
    p.add_argument("--outdir", required=True)
    p.add_argument("--grids", required=True, help="folder of sample grids")
    p.add_argument("--paper", help="the paper's published tables (YAML)")

    p = sub.add_parser("report", help="a Markdown summary of tables and figures")
    p.add_argument("--tables", nargs="+", required=True)
    p.add_argument("--figures", nargs="+", required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("check-config", help="validate a pipeline config file")
    p.add_argument("configfiles", nargs="+")

    sub.add_parser("bench", help="print benchmark numbers as JSON (see ied.bench)", add_help=False)

    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["bench"]:
        from ied.bench import main as bench_main
        return bench_main(argv[1:])
    args = parser.parse_args(argv)
    from ied.io import CorruptFileError, quarantine
    try:
        return COMMANDS[args.command](args) or 0
    except CorruptFileError as err:
        # A file this pipeline wrote is damaged: move it aside so the next run regenerates it.
        moved = quarantine(err.path)
        print(f"error: {err}. Moved it to {moved}; rerun the pipeline to regenerate it.", file=sys.stderr)
        return 1


def _prepare(a):
    from ied.data import prepare
    data = prepare(a.dataset, a.split, a.out, data_root=a.data_root, download=a.download, verify=not a.no_verify,
                   max_images=a.max_images)
    print(f"{a.out}: {len(data)} images {data.images.shape[1:]}", file=sys.stderr)


def _tabulate(a):
    from ied.rationales import build_all, tabulate
    tabulate(build_all(a.rationales)[a.name], n=a.n).to_parquet(a.out)


def _train(a):
    from ied.train import train
    train(a.config, a.start, a.end, data_path=a.data, checkpoint_in=a.resume, checkpoint_out=a.out,
          log_path=a.log, allow_config_change=a.allow_config_change)


def _train_evaluator(a):
    from ied.data import load_imageset
    from ied.metrics import train_digits_cnn
    accuracy = train_digits_cnn(load_imageset(a.train), load_imageset(a.test), a.out)
    print(json.dumps({"digits_cnn_test_accuracy": accuracy}), file=sys.stderr)
    if accuracy < a.min_accuracy:
        raise SystemExit(f"digits evaluator reached only {accuracy:.3f} test accuracy (< {a.min_accuracy})")


def _generate(a):
    from ied.generate import generate
    generate(a.checkpoint, a.rationale, a.sampler, a.steps, a.out, options=a.options, n_samples=a.n_samples,
             seed_set=a.seed_set, batch_size=a.batch_size, shard_size=a.shard_size, grid=a.grid, meta=a.meta, log_path=a.log)


def _evaluate(a):
    from ied.metrics import evaluate
    row = evaluate(a.samples, a.reference, a.extractor, a.weights, a.out, meta=a.meta, cache_root=a.cache_root)
    print(json.dumps({k: row[k] for k in ("fid", "isc_mean", "kid_mean")}), file=sys.stderr)


def _aggregate(a):
    import pandas as pd

    from ied.io import atomic_path
    frame = pd.concat([pd.read_parquet(p) for p in a.rows], ignore_index=True)
    with atomic_path(a.out) as tmp:
        frame.to_parquet(tmp, index=False)


def _tables(a):
    from ied.tables import write_tables
    write_tables(a.metrics, a.config, a.outdir)


def _figures(a):
    from ied.figures import write_figures
    write_figures(a.metrics, a.config, a.schedules, a.grids, a.outdir, a.paper)


def _report(a):
    from ied.tables import write_report
    write_report(a.tables, a.figures, a.out)


def _check_config(a):
    from ied.config import load
    load(a.configfiles)
    print("config ok", file=sys.stderr)


COMMANDS = {"prepare": _prepare, "tabulate": _tabulate, "train": _train, "train-evaluator": _train_evaluator,
            "generate": _generate, "evaluate": _evaluate, "aggregate": _aggregate, "tables": _tables,
            "figures": _figures, "report": _report, "check-config": _check_config}

if __name__ == "__main__":
    sys.exit(main())
