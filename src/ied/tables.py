"""Tables 1–4 of the paper from the aggregated metrics: Parquet data plus Markdown and LaTeX."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ied.io import atomic_path, write_text

CELL_KEYS = ["sampler_name", "train_rationale", "sample_rationale"]


def with_labels(metrics: pd.DataFrame, labels: Mapping[str, str]) -> pd.DataFrame:
    """Display labels joined by rationale name (labels are not part of any job, only of the tables)."""
    return metrics.assign(train_label=metrics["train_rationale"].map(lambda n: labels.get(n, n)),
                          sample_label=metrics["sample_rationale"].map(lambda n: labels.get(n, n)))


def per_checkpoint(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seed sets per (sampler, train, sample, checkpoint); degenerate if any set is."""
    def summarize(g: pd.DataFrame) -> pd.Series:
        one = len(g) == 1
        return pd.Series({
            "train_label": g["train_label"].iloc[0], "sample_label": g["sample_label"].iloc[0],
            "degenerate": "; ".join(sorted({d for d in g["degenerate"] if d})),
            "fid_mean": g["fid"].mean(), "fid_std": g["fid"].std(ddof=1) if not one else math.nan,
            "isc_mean": g["isc_mean"].mean(),
            # one evaluation: torch-fidelity's std over the 10 IS splits, as the paper reports
            "isc_std": g["isc_std"].iloc[0] if one else g["isc_mean"].std(ddof=1),
            "kid_mean": g["kid_mean"].mean(), "seed_sets": len(g)})
    return metrics.groupby(CELL_KEYS + ["checkpoint_step"]).apply(summarize, include_groups=False).reset_index()


def best_checkpoints(metrics: pd.DataFrame, grid: Mapping[str, Any]) -> pd.DataFrame:
    """Each (sampler, train, sample) cell at its best-FID checkpoint, main grid only (no ablation).

    Degenerate evaluations are never the best; a cell with nothing else keeps one, flagged."""
    frame = with_labels(metrics[metrics["train_rationale"].isin(grid["train"])
                                & metrics["sample_rationale"].isin(grid["sample"])], grid["labels"])
    summary = per_checkpoint(frame)
    ranked = summary.assign(_rank=summary["fid_mean"].where(summary["degenerate"] == "", math.inf))
    best = summary.loc[ranked.groupby(CELL_KEYS)["_rank"].idxmin()].reset_index(drop=True)
    order = {name: i for i, name in enumerate(grid["sample"])}
    order_t = {name: i for i, name in enumerate(grid["train"])}
    return best.sort_values(["sampler_name", "train_rationale", "sample_rationale"],
                            key=lambda c: c.map(order_t) if c.name == "train_rationale" else
                            (c.map(order) if c.name == "sample_rationale" else c)).reset_index(drop=True)


def star(means: pd.Series, stds: pd.Series, lower_is_better: bool) -> pd.Series:
    """The paper's '*': within one std of the table's best score (intervals overlap), best excluded."""
    if means.isna().all():
        return pd.Series(False, index=means.index)
    i_best = means.idxmin() if lower_is_better else means.idxmax()
    lo_b, hi_b = means[i_best] - np.nan_to_num(stds[i_best]), means[i_best] + np.nan_to_num(stds[i_best])
    lo, hi = means - stds, means + stds
    overlap = (lo <= hi_b) & (hi >= lo_b) & stds.notna() & (stds > 0)
    return overlap & (means.index != i_best)


def _fmt(mean: float, std: float, starred: bool, bold: bool = False) -> str:
    text = f"{mean:.2f}" + ("*" if starred else "") + (f" ± {std:.2f}" if not math.isnan(std) else "")
    return f"**{text}**" if bold else text


def render(best: pd.DataFrame, metric: str) -> dict[str, pd.DataFrame]:
    """Per sampler, a training × sampling grid of 'mean ± std' strings with stars; degenerate cells unranked."""
    tables = {}
    for sampler, frame in best.groupby("sampler_name", sort=False):
        frame = frame.reset_index(drop=True)
        lower = metric == "fid"
        usable = frame["degenerate"] == ""
        means = frame[f"{metric}_mean"].where(usable)
        stars = star(means, frame[f"{metric}_std"], lower)
        i_best = (means.idxmin() if lower else means.idxmax()) if usable.any() else None
        frame["cell"] = [_fmt(m, s, st, i == i_best) if ok else "degenerate" for i, (m, s, st, ok) in
                         enumerate(zip(frame[f"{metric}_mean"], frame[f"{metric}_std"], stars, usable))]
        grid = frame.pivot(index="train_label", columns="sample_label", values="cell")
        grid = grid.loc[list(dict.fromkeys(frame["train_label"])), list(dict.fromkeys(frame["sample_label"]))]
        grid.index.name, grid.columns.name = "Training \\ Sampling", None
        tables[str(sampler)] = grid
    return tables


def to_latex(grid: pd.DataFrame, caption: str) -> str:
    """A booktabs tabular (bold best, as in the paper)."""
    def tex(cell: str) -> str:
        cell = cell.replace("±", r"$\pm$").replace("*", r"$^*$").replace("²", "$^2$")
        return rf"\textbf{{{cell[2:-2]}}}" if cell.startswith("**") else cell
    cols = "l" + "c" * len(grid.columns)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}}}", rf"\begin{{tabular}}{{{cols}}}",
             r"\toprule", "Training $\\backslash$ Sampling & " + " & ".join(tex(c) for c in grid.columns) + r" \\",
             r"\midrule"]
    lines += [tex(str(idx)) + " & " + " & ".join(tex(v) for v in row) + r" \\" for idx, row in grid.iterrows()]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def write_tables(metrics_path: str | Path, grid: Mapping[str, Any], outdir: str | Path) -> None:
    """fid_is (Tables 1/2: best FID and IS at that checkpoint) and fid_std (Tables 3/4)."""
    metrics = pd.read_parquet(metrics_path)
    best = best_checkpoints(metrics, grid)
    outdir = Path(outdir)
    specs = {"fid_is": (["fid", "isc"], "Best FID over training and IS at that checkpoint"),
             "fid_std": (["fid"], "FID mean $\\pm$ std over seed sets at each cell's best checkpoint")}
    for name, (metric_list, caption) in specs.items():
        columns = CELL_KEYS + ["train_label", "sample_label", "checkpoint_step", "seed_sets", "degenerate"] + [
            f"{m}_{s}" for m in metric_list for s in ("mean", "std")]
        with atomic_path(outdir / f"{name}.parquet") as tmp:
            best[columns].to_parquet(tmp, index=False)
        md, tex = [], []
        for metric in metric_list:
            title = {"fid": "FID ↓", "isc": "IS ↑"}[metric]
            for sampler, grid in render(best, metric).items():
                md += [f"### {title} — sampler `{sampler}`", "", grid.to_markdown(), ""]
                tex.append(to_latex(grid, f"{caption}: {title.split()[0]}, sampler {sampler}."))
        note = ("`*`: within one standard deviation of the table's best score (bold); std over seed sets, "
                "or over IS splits when there is one evaluation. `degenerate`: constant or all-alike samples, "
                "never ranked.")
        write_text(outdir / f"{name}.md", "\n".join(md + [note, ""]))
        write_text(outdir / f"{name}.tex", "\n".join(tex))


def write_report(tables: Sequence[str], figures: Sequence[str], out: str | Path) -> None:
    """A Markdown report: every table inline and every figure linked (Snakemake --report builds HTML)."""
    out = Path(out)
    lines = ["# Inverse Engineering Diffusion — results", ""]
    for path in tables:
        if path.endswith(".md"):
            lines += [f"## {Path(path).stem}", "", Path(path).read_text(), ""]
    lines += ["## Figures", ""]
    for path in figures:
        if path.endswith(".png"):
            lines += [f"![{Path(path).stem}]({os.path.relpath(path, out.parent)})", ""]
    write_text(out, "\n".join(lines))
