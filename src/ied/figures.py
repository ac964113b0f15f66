"""Figures 1–9 of the paper (seaborn, PNG and PDF) and a comparison with the published tables."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ied import layout  # noqa: E402
from ied.io import atomic_path  # noqa: E402
from ied.tables import best_checkpoints, per_checkpoint, with_labels  # noqa: E402


def _save(fig, outdir: Path, name: str) -> None:
    for ext in ("png", "pdf"):
        with atomic_path(outdir / f"{name}.{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight")
    plt.close(fig)


def _label(grid: Mapping[str, Any], name: str) -> str:
    return grid["labels"].get(name, name)


def _empty(outdir: Path, name: str, message: str) -> None:
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    _save(fig, outdir, name)


def fig_rationales(schedules: dict[str, pd.DataFrame], config, outdir: Path) -> None:
    """Fig. 1: pdf, cdf and schedule σ(t) of every rationale."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, table in schedules.items():
        label = _label(config, name)
        axes[0].plot(table["sigma"], table["pdf"] * table["sigma"], label=label)
        axes[1].plot(table["sigma"], table["cdf"], label=label)
        axes[2].plot(table["t"], table["sigma"], label=label)
    axes[0].set(xscale="log", xlabel="σ", ylabel="σ·φ(σ)  (density per unit log σ)", title="rationale (PDF)")
    axes[1].set(xscale="log", xlabel="σ", ylabel="Φ(σ)", title="CDF")
    axes[2].set(yscale="log", xlabel="t", ylabel="σ(t) = Φ⁻¹(t)", title="variance schedule")
    axes[2].legend(fontsize=8)
    _save(fig, outdir, "fig1_rationales")


def fig_marginals(schedules: dict[str, pd.DataFrame], config, outdir: Path, x_max: float = 10.0) -> None:
    """Fig. 2: density of p_0t(x(t) | 0) = N(x; 0, σ(t)²) over t and x, one panel per rationale."""
    names = list(schedules)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), sharey=True, squeeze=False)
    x = np.linspace(-x_max, x_max, 301)
    for ax, name in zip(axes[0], names):
        table = schedules[name]
        sigma = np.interp(np.linspace(1e-3, 1, 300), table["t"], table["sigma"])
        density = np.exp(-0.5 * (x[:, None] / sigma[None]) ** 2) / (sigma[None] * math.sqrt(2 * math.pi))
        ax.imshow(density, aspect="auto", origin="lower", extent=(0, 1, -x_max, x_max), cmap="Oranges",
                  norm=matplotlib.colors.PowerNorm(0.3, vmin=0, vmax=min(density.max(), 2.0)))
        ax.set(title=_label(config, name), xlabel="t")
    axes[0][0].set_ylabel("x(t)")
    _save(fig, outdir, "fig2_marginals")


def fig_over_training(metrics: pd.DataFrame, config, outdir: Path, metric: str, name: str) -> None:
    """Figs. 3/4/6/7: a metric against training step, a panel per training rationale, std bands."""
    main = metrics[metrics["sample_rationale"].isin(config["sample"]) & metrics["train_rationale"].isin(config["train"])]
    summary = per_checkpoint(with_labels(main, config["labels"]))
    samplers, trains = config["samplers"], config["train"]
    fig, axes = plt.subplots(len(samplers), len(trains), figsize=(4 * len(trains), 3.2 * len(samplers)),
                             sharey=True, squeeze=False)
    palette = dict(zip(config["sample"], sns.color_palette("tab10")))
    for r, sampler in enumerate(samplers):
        for c, train in enumerate(trains):
            ax = axes[r][c]
            cell = summary[(summary["sampler_name"] == sampler) & (summary["train_rationale"] == train)]
            for sample, line in cell.groupby("sample_rationale"):
                line = line.sort_values("checkpoint_step")
                mean, std = line[f"{metric}_mean"], line[f"{metric}_std"].fillna(0)
                ax.plot(line["checkpoint_step"], mean, marker="o", color=palette[sample],
                        label=_label(config, sample))
                ax.fill_between(line["checkpoint_step"], mean - std, mean + std, color=palette[sample], alpha=0.2)
            ax.set(title=f"trained: {_label(config, train)} ({sampler})", xlabel="training step",
                   ylabel={"fid": "FID ↓", "isc": "IS ↑"}[metric])
    axes[0][-1].legend(title="sampling", fontsize=8)
    _save(fig, outdir, name)


def fig_ablation(metrics: pd.DataFrame, config, outdir: Path) -> None:
    """Fig. 5: one model sampled with N(0, σ_N²) rationales for a list of σ_N."""
    ablation = config["ablation"]
    names = ablation["sigma_n"]
    rows = metrics[metrics["sample_rationale"].isin(names) & (metrics["train_rationale"] == ablation["train_rationale"])
                   & (metrics["sampler_name"] == ablation["sampler"]) & (metrics["seed_set"] == 0)]
    if rows.empty:
        return _empty(outdir, "fig5_sigma_n_ablation", "no σ_N ablation configured (config key 'ablation')")
    rows = rows[rows["checkpoint_step"] == ablation["checkpoint"]]
    rows = rows.assign(sigma_n=rows["sample_rationale"].map(names)).sort_values("sigma_n")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    sns.lineplot(data=rows, x="sigma_n", y="fid", marker="o", ax=ax, errorbar="sd")
    ax.set(xlabel="σ_N of the N(0, σ_N²) sampling rationale", ylabel="FID ↓",
           title=f"trained: {_label(config, ablation['train_rationale'])}, sampler {ablation['sampler']}")
    _save(fig, outdir, "fig5_sigma_n_ablation")


def fig_grids(metrics: pd.DataFrame, config, root: Path, outdir: Path) -> None:
    """Figs. 8/9: 10×10 sample grids at each cell's best checkpoint (first sampler, seed set 0)."""
    best = best_checkpoints(metrics, config)
    sampler = config["samplers"][0]
    best = best[best["sampler_name"] == sampler]
    trains, samples = config["train"], config["sample"]
    fig, axes = plt.subplots(len(trains), len(samples), figsize=(2.6 * len(samples), 2.6 * len(trains)),
                             squeeze=False)
    for r, train in enumerate(trains):
        for c, sample in enumerate(samples):
            ax = axes[r][c]
            ax.axis("off")
            row = best[(best["train_rationale"] == train) & (best["sample_rationale"] == sample)]
            if row.empty:
                continue
            step = int(row["checkpoint_step"].iloc[0])
            image = plt.imread(root / layout.cell_path(layout.GRID, layout.Cell(train, step, sample, sampler, 0)))
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
            ax.set_title(f"{_label(config, train)} → {_label(config, sample)}\nstep {step}", fontsize=8)
    fig.suptitle(f"Samples (rows: training rationale, columns: sampling rationale; sampler {sampler})")
    _save(fig, outdir, "fig8_sample_grids")


def fig_paper_comparison(metrics: pd.DataFrame, config, outdir: Path) -> None:
    """Our FID grid next to the paper's, each row divided by its minimum so the patterns compare."""
    paper = config["paper"]
    if not paper:
        return _empty(outdir, "paper_comparison", "no paper results file configured (config key 'paper_results')")
    dataset = config["dataset"]
    key = dataset if dataset in paper else "cifar10"
    table_name, table = next(iter(paper[key]["fid"].items()))
    ref = pd.DataFrame({train: {s: v[0] for s, v in row.items()} for train, row in table["rows"].items()}).T
    best = best_checkpoints(metrics, config)
    best = best[best["sampler_name"] == config["samplers"][0]]
    ours = best.pivot(index="train_label", columns="sample_label", values="fid_mean")
    rows = [r for r in ref.index if r in ours.index]
    cols = [c for c in ref.columns if c in ours.columns]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, frame, title in ((axes[0], ref, f"paper, {key} ({table['source']})"),
                             (axes[1], ours, f"ours, {dataset}")):
        frame = frame.loc[rows or frame.index, cols or frame.columns].astype(float)
        sns.heatmap(frame.div(frame.min(axis=1), axis=0), annot=frame.round(2), fmt="", cmap="rocket_r",
                    ax=ax, cbar_kws={"label": "FID / row minimum"})
        ax.set(title=title, xlabel="sampling rationale", ylabel="training rationale")
    note = "" if key == dataset else f"  (no published {dataset} numbers: patterns, not values, compare)"
    fig.suptitle("FID: ours vs the paper" + note, fontsize=10)
    _save(fig, outdir, "paper_comparison")


def write_figures(metrics_path: str | Path, config: Mapping[str, Any], schedule_paths: Sequence[str],
                  root: str | Path, outdir: str | Path) -> None:
    """Write every figure as PNG and PDF into `outdir`; `config` is the figures' slice (rules/report.smk)."""
    sns.set_theme(style="whitegrid", context="paper")
    outdir = Path(outdir)
    metrics = pd.read_parquet(metrics_path)
    schedules = {Path(p).stem: pd.read_parquet(p) for p in schedule_paths}
    main = {n: t for n, t in schedules.items() if n in config["schedules"]}
    fig_rationales(main, config, outdir)
    fig_marginals(main, config, outdir)
    fig_over_training(metrics, config, outdir, "fid", "fig3_fid_over_training")
    fig_over_training(metrics, config, outdir, "isc", "fig4_is_over_training")
    fig_ablation(metrics, config, outdir)
    fig_grids(metrics, config, Path(root), outdir)
    fig_paper_comparison(metrics, config, outdir)
