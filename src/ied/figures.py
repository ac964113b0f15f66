"""The paper's figures by number (seaborn, PNG and PDF), the comparison with the published tables, and the
plots schedule researchers look at next: FID against NFE and the training loss per noise level.

`experiment` is what the figures receive (ied.layout.figure_inputs: names, labels, protocols, the
ablation, the sweep, the paper's tables and the artefact names of ied.layout).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ied import layout  # noqa: E402
from ied.adaptive import read_density  # noqa: E402
from ied.rationales import build  # noqa: E402
from ied.layout import FigureInputs  # noqa: E402
from ied.io import atomic_path  # noqa: E402
from ied.tables import (nfe_over_seeds, nfe_table, nll_summary, per_checkpoint, protocol_rows,  # noqa: E402
                        repeated_table, single_table)



def _save(fig, outdir: Path, name: str) -> None:
    for ext in layout.FIGURE_FORMATS:
        with atomic_path(outdir / f"{name}.{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight")
    plt.close(fig)


def _label(experiment: FigureInputs, name: str) -> str:
    return experiment["labels"].get(name, name)


def _empty(outdir: Path, name: str, message: str) -> None:
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    _save(fig, outdir, name)


def _palette(names: Sequence[str]) -> dict[str, Any]:
    return dict(zip(names, sns.color_palette("tab10", max(len(names), 1))))


def _fid_axis(ax, values: pd.Series) -> None:
    """A log FID axis when the values span more than a factor of 10."""
    values = values[np.isfinite(values) & (values > 0)]
    if len(values) and values.max() > 10 * values.min():
        ax.set_yscale("log")


def _legend(fig, axes, experiment: FigureInputs, names: Sequence[str], title: str) -> None:
    """One legend for the figure, in the config's order."""
    handles = {h.get_label(): h for ax in np.ravel(axes) for h in ax.get_lines()}
    ordered = [handles[_label(experiment, n)] for n in names if _label(experiment, n) in handles]
    if ordered:
        fig.legend(ordered, [h.get_label() for h in ordered], title=title, loc="outside right center", fontsize=8)


# --- Figs. 1 and 2: the rationales themselves -----------------------------------------------------------
def fig_rationales(schedules: dict[str, pd.DataFrame], experiment: FigureInputs, outdir: Path, name: str) -> None:
    """Fig. 1: PDF, CDF and schedule σ(t) = Φ⁻¹(t) of every rationale; those fitted to or learned by a model
    dashed."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), layout="constrained")
    made = _made_by_models(experiment)
    for key, table in schedules.items():
        style = {"label": _label(experiment, key), "linestyle": "--" if key in made else "-"}
        axes[0].plot(table["sigma"], table["pdf"] * table["sigma"], **style)
        axes[1].plot(table["sigma"], table["cdf"], **style)
        axes[2].plot(table["t"], table["sigma"], **style)
    axes[0].set(xscale="log", xlabel="σ", ylabel="σ·φ(σ)  (density per unit log σ)", title="(a) rationale, PDF")
    axes[1].set(xscale="log", xlabel="σ", ylabel="Φ(σ)", title="(b) CDF")
    axes[2].set(yscale="log", xlabel="t", ylabel="σ(t) = Φ⁻¹(t)", title="(c) variance schedule")
    _legend(fig, axes, experiment, list(schedules), "rationale")
    _save(fig, outdir, name)


def _made_by_models(experiment: FigureInputs) -> set[str]:
    """The rationales fitted to or learned by a model (their densities come from a job's table)."""
    return set(experiment.get("fitted", [])) | set(experiment.get("learned", []))


def fig_adaptive_density(densities: Mapping[str, pd.DataFrame], schedules: Mapping[str, pd.DataFrame],
                         experiment: FigureInputs, outdir: Path, name: str) -> None:
    """The adaptive training rationales: (a) the learned density after each segment (darker: earlier) as what it is,
    a probability per bin of log σ (π_b over the bin's width in log σ: a step per bin, so the target's shape inside a
    bin does not read as a saw-tooth of the data), beside its target's per-bin mass (dashed) and the fixed training
    rationales, in Fig. 1's σ·φ(σ); (b) the loss EMA per bin it follows."""
    models = list(experiment["adaptive"])
    fig, axes = plt.subplots(2, len(models), figsize=(5.5 * len(models) + 1.5, 7), squeeze=False,
                             layout="constrained")
    cmap = plt.get_cmap("viridis")
    for (top, bottom), model in zip(axes.T, models):
        table, spec = densities.get(model, (pd.DataFrame(columns=["step"]), None))
        last = max(int(table["step"].max()) if len(table) else 1, 1)
        for step, rows in table.groupby("step"):
            rows = rows.sort_values("sigma_lo")
            edges = np.append(rows["sigma_lo"].to_numpy(), rows["sigma_hi"].to_numpy()[-1])
            width = np.diff(np.log(edges))
            top.stairs(rows["probability"].to_numpy() / width, edges, color=cmap(step / last), lw=1.2,
                       label=f"step {step}")
            bottom.step(rows["sigma_lo"], rows["loss"], where="post", color=cmap(step / last), lw=1)
        if len(table):
            rows = table[table["step"] == table["step"].max()].sort_values("sigma_lo")
            top.stairs(rows["target_mass"].to_numpy() / width, edges, color="k", ls="--", lw=1.0,
                       label="target, per bin")
        fixed = [t for t in experiment["train"] if t in schedules and t not in experiment.get("pretrained", [])]
        palette = _palette(fixed)
        for other in fixed:
            line = schedules[other]
            top.plot(line["sigma"], line["pdf"] * line["sigma"], color=palette[other], lw=0.8, alpha=0.7,
                     label=_label(experiment, other))
        if spec is not None:
            target = build("target", spec["target"])
            grid = np.geomspace(target.sigma_min, target.sigma_max, 2000)
            named = experiment["adaptive"][model]
            top.plot(grid, target.pdf(grid) * grid, "k-", lw=0.6, alpha=0.6,
                     label=f"target: {_label(experiment, named) if named else 'inline'}")
        top.set(xscale="log", xlabel="σ", ylabel="σ·p(σ)  (density per unit log σ)",
                title=f"(a) {_label(experiment, model)}: learned density, per bin of log σ")
        top.legend(fontsize=7)
        bottom.set(xscale="log", yscale="log", xlabel="σ", ylabel="loss EMA per bin  L̄(σ)",
                   title="(b) the per-bin loss it follows")
    _save(fig, outdir, name)


def fig_marginals(schedules: dict[str, pd.DataFrame], experiment: FigureInputs, outdir: Path, name: str,
                  x_max: float = 10.0) -> None:
    """Fig. 2: the density of p₀ₜ(x(t) | 0) = N(x; 0, σ(t)²) over t and x, a panel per hand-made rationale (the
    fitted ones are in Fig. 1), one colorbar."""
    names = [name for name in schedules if name not in _made_by_models(experiment)]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names) + 1, 3.2), sharey=True, squeeze=False,
                             layout="constrained")
    x = np.linspace(-x_max, x_max, 301)
    norm = matplotlib.colors.PowerNorm(0.3, vmin=0, vmax=2.0)
    for ax, key in zip(axes[0], names):
        table = schedules[key]
        sigma = np.interp(np.linspace(1e-3, 1, 300), table["t"], table["sigma"])
        density = np.exp(-0.5 * (x[:, None] / sigma[None]) ** 2) / (sigma[None] * math.sqrt(2 * math.pi))
        image = ax.imshow(density, aspect="auto", origin="lower", extent=(0, 1, -x_max, x_max), cmap="Oranges",
                          norm=norm)
        ax.set(title=_label(experiment, key), xlabel="t")
        ax.grid(False)
    axes[0][0].set_ylabel("x(t)")
    fig.colorbar(image, ax=axes[0].tolist(), label="p₀ₜ(x(t) | 0)")
    _save(fig, outdir, name)


# --- Figs. 3/4 and 6/7: scores over training ---------------------------------------------------------------
def _over_training(summary: pd.DataFrame, experiment: FigureInputs, panels: list[tuple[str, str, str]], outdir: Path,
                   name: str, title: str) -> None:
    """Rows of panels (metric, sampler, row title) × a column per model; std bands; shared y per row. A pretrained
    model's column holds its one checkpoint (its published weights) as one point per sampling rationale."""
    trains, samples = _training_rationales(experiment), experiment["single"]["rationales"] + [
        s for s in experiment["repeated"]["rationales"] if s not in experiment["single"]["rationales"]]
    palette = _palette(samples)
    fig, axes = plt.subplots(len(panels), len(trains), figsize=(3.6 * len(trains) + 1.6, 3.0 * len(panels)),
                             sharey="row", squeeze=False, layout="constrained")
    for r, (metric, sampler, row_title) in enumerate(panels):
        for c, train in enumerate(trains):
            ax = axes[r][c]
            cell = summary[(summary["sampler_name"] == sampler) & (summary["train_rationale"] == train)]
            for sample in samples:
                line = cell[cell["sample_rationale"] == sample].sort_values("checkpoint_step")
                if line.empty:
                    continue
                mean, std = line[f"{metric}_mean"], line[f"{metric}_std"].fillna(0)
                ax.plot(line["checkpoint_step"], mean, marker="o", ms=3, color=palette[sample],
                        label=_label(experiment, sample))
                ax.fill_between(line["checkpoint_step"], mean - std, mean + std, color=palette[sample], alpha=0.2)
            if train in experiment.get("pretrained", []):
                ax.set_title(f"{_label(experiment, train)} (pretrained)", fontsize=9)
                ax.set_xticks([0], ["published weights"] if r == len(panels) - 1 else [""])
            else:
                ax.set_title(f"trained with {_label(experiment, train)}", fontsize=9)
                ax.set_xlabel("training step" if r == len(panels) - 1 else "")
        axes[r][0].set_ylabel(row_title)
        if metric == "fid":
            _fid_axis(axes[r][0], summary[summary["sampler_name"] == sampler]["fid_mean"])
    _legend(fig, axes, experiment, samples, "sampling")
    fig.suptitle(title, fontsize=10)
    _save(fig, outdir, name)


def _training_rationales(experiment: FigureInputs) -> list[str]:
    """The models by training rationale, in order: a rationale's seeds are one column (their mean ± std)."""
    seeds = experiment.get("seeds", {})
    return list(dict.fromkeys(seeds.get(m, (m, 0))[0] for m in experiment["train"]))


def fig_over_training(metrics: pd.DataFrame, experiment: FigureInputs, outdir: Path, name: str) -> None:
    """Figs. 3/4: (a) FID and (b) IS over training from the single sets; IS bands: std over its 10 splits, or over
    the training seeds of a rationale trained with several (as FID's)."""
    single = experiment["single"]
    summary = per_checkpoint(protocol_rows(metrics, single))
    panels = [(metric, sampler, f"({chr(97 + i)}) {'FID ↓' if metric == 'fid' else 'IS ↑'} — {sampler}")
              for i, (metric, sampler) in enumerate((m, s) for m in ("fid", "isc") for s in single["samplers"])]
    _over_training(summary, experiment, panels, outdir, name,
                   f"Scores over training, one set of {single['n_samples']} samples per checkpoint")


def fig_over_sets(metrics: pd.DataFrame, experiment: FigureInputs, outdir: Path, name: str) -> None:
    """Figs. 6/7: FID mean ± std over the repeated sets, over the repeated range of checkpoints."""
    repeated = experiment["repeated"]
    summary = per_checkpoint(protocol_rows(metrics, repeated))
    panels = [("fid", sampler, f"FID ↓ — {sampler}") for sampler in repeated["samplers"]]
    _over_training(summary, experiment, panels, outdir, name,
                   f"FID ± std over {repeated['sets']} sets of {repeated['n_samples']} samples, "
                   f"up to step {max(repeated['steps'])}")


# --- Fig. 5: the σ_N ablation -----------------------------------------------------------------------------
def fig_ablation(metrics: pd.DataFrame, experiment: FigureInputs, outdir: Path, name: str) -> None:
    """Fig. 5: one model sampled with N(0, σ_N²) for each σ_N (the grid's N(0, 5²) cell is its σ_N = 5 point)."""
    ablation = experiment["ablation"]
    sigma_n = ablation["sigma_n"]
    rows = metrics[metrics["sample_rationale"].isin(sigma_n)
                   & (metrics["train_rationale"] == ablation["train_rationale"])
                   & (metrics["sampler_name"] == ablation["sampler"]) & (metrics["seed_set"] == 0)
                   & (metrics["checkpoint_step"] == ablation["checkpoint"])
                   & (metrics["n_samples"] == experiment["single"]["n_samples"])]
    if rows.empty:
        return _empty(outdir, name, "no σ_N ablation configured (config key 'ablation')")
    rows = rows.assign(sigma_n=rows["sample_rationale"].map(sigma_n)).sort_values("sigma_n")
    fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
    ax.plot(rows["sigma_n"], rows["fid"], marker="o")
    ax.set(xscale="log", xlabel="σ_N of the N(0, σ_N²) sampling rationale", ylabel="FID ↓",
           title=f"trained with {_label(experiment, ablation['train_rationale'])}, step {ablation['checkpoint']}, "
                 f"{ablation['sampler']}")
    _fid_axis(ax, rows["fid"])
    _save(fig, outdir, name)


# --- Figs. 8/9: samples -------------------------------------------------------------------------------------
def fig_samples(metrics: pd.DataFrame, experiment: FigureInputs, root: Path, outdir: Path, name: str) -> None:
    """Figs. 8/9: the 10×10 grid of each cell's single set at its Table 1/2 checkpoint (first sampler; of a training
    rationale's first seed)."""
    best = single_table(metrics, experiment)
    sampler = experiment["single"]["samplers"][0]
    best = best[best["sampler_name"] == sampler]
    trains, samples = _training_rationales(experiment), experiment["single"]["rationales"]
    n = experiment["single"]["n_samples"]
    fig, axes = plt.subplots(len(trains), len(samples), figsize=(2.6 * len(samples), 2.8 * len(trains)),
                             squeeze=False, layout="constrained")
    for r, train in enumerate(trains):
        for c, sample in enumerate(samples):
            ax = axes[r][c]
            ax.axis("off")
            row = best[(best["train_rationale"] == train) & (best["sample_rationale"] == sample)]
            if row.empty:
                continue
            step = int(row["checkpoint_step"].iloc[0])
            model = next(m for m in experiment["train"] if experiment.get("seeds", {}).get(m, (m, 0))[0] == train)
            image = plt.imread(root / layout.cell_path(layout.GRID, layout.Cell(model, step, sample, sampler, n, 0)))
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
            ax.grid(False)
            ax.set_title(f"{_label(experiment, train)} → {_label(experiment, sample)}, step {step}", fontsize=8)
    fig.suptitle(f"Samples the Table's FIDs were computed on (rows: training, columns: sampling; {sampler})",
                 fontsize=10)
    _save(fig, outdir, name)


# --- the comparison with the paper's tables -----------------------------------------------------------------
def _in_order(grid: pd.DataFrame, rows: Sequence[str], cols: Sequence[str]) -> pd.DataFrame:
    """Rows and columns in the config's order (labels), anything else after them."""
    def order(present, wanted):
        return [x for x in wanted if x in present] + [x for x in present if x not in wanted]
    return grid.loc[order(list(grid.index), rows), order(list(grid.columns), cols)]


def _paper_grid(published: Mapping[str, Any] | None) -> pd.DataFrame | None:
    if not published or "fid" not in published:
        return None
    rows = published["fid"]
    return pd.DataFrame([[v[0] for v in row.values()] for row in rows.values()], index=list(rows),
                        columns=list(next(iter(rows.values()))))


def fig_paper_comparison(metrics: pd.DataFrame, experiment: FigureInputs, outdir: Path, name: str) -> None:
    """Our Table 1/2 and 3/4 FIDs next to the paper's same tables; colour = FID / that table's best, one scale."""
    ours = {"single": single_table(metrics, experiment), "repeated": repeated_table(metrics, experiment)}
    tables, paper = experiment["artefacts"]["tables"], experiment["paper"].get(experiment["paper_style"], {})
    panels = []
    for role, value in (("single", "fid"), ("repeated", "fid_mean")):
        table = ours[role]
        table = table[table["sampler_name"] == experiment[role]["samplers"][0]]
        rows = [_label(experiment, n) for n in _training_rationales(experiment)]
        cols = [_label(experiment, n) for n in experiment[role]["rationales"]]
        grid = _in_order(table.pivot(index="train_label", columns="sample_label", values=value).astype(float),
                         rows, cols)
        published = _paper_grid(paper.get(tables[role]))
        number = tables[role].removeprefix("table")
        panels += [(f"ours, Table {number} ({experiment['dataset']})", grid),
                   (f"paper, Table {number} ({experiment['paper_style']})",
                    None if published is None else _in_order(published, rows, cols))]
    ratios = [g / np.nanmin(g.values) for _, g in panels if g is not None and g.size]
    vmax = max([float(np.nanmax(r.values)) for r in ratios] + [1.01])
    fig, axes = plt.subplots(2, 2, figsize=(13, 8), layout="constrained")
    for ax, (title, grid) in zip(axes.ravel(), panels):
        if grid is None or not grid.size:
            ax.axis("off")
            ax.text(0.5, 0.5, f"{title}:\nnot legible in the paper", ha="center", va="center")
            continue
        sns.heatmap(grid / np.nanmin(grid.values), annot=grid.round(2), fmt="", cmap="rocket_r", vmin=1.0,
                    vmax=vmax, ax=ax, cbar_kws={"label": "FID / the table's best"})
        ax.set(title=title, xlabel="sampling rationale", ylabel="training rationale")
    note = "" if experiment["dataset"] == experiment["paper_style"] else \
        f" — {experiment['dataset']} against the paper's {experiment['paper_style']}: patterns, not values, compare"
    fig.suptitle("FID, like with like (ours vs the paper)" + note, fontsize=10)
    _save(fig, outdir, name)


# --- beyond the paper: FID against NFE, training loss per noise level ----------------------------------------
def fig_fid_nfe(metrics: pd.DataFrame, experiment: FigureInputs, outdir: Path, name: str) -> None:
    """FID (top) and the distance from the probability-flow solution (below it) against NFE per image at one
    checkpoint: a column per solver, a colour per schedule in every panel (the fitted and learned ones dashed), 95 %
    intervals as bands, a published network's published rows as black markers in their solver's panel, and one
    legend outside the axes."""
    table = nfe_over_seeds(nfe_table(metrics, experiment), experiment.get("seeds", {}))  # a rationale's seeds: one line
    sweep = experiment["sweep"]
    trains = list(dict.fromkeys(table["train_rationale"])) or sweep["train"][:1]
    solvers, schedules = sweep["samplers"], sweep["rationales"]
    palette, made = _palette(schedules), _made_by_models(experiment)
    blocks = [("fid", "FID ↓")] + [("ref_rmse", "distance from the flow ↓")] * bool(table["ref_rmse"].notna().any())
    fig, axes = plt.subplots(len(trains) * len(blocks), len(solvers), squeeze=False, sharex="col",
                             figsize=(3.2 * len(solvers) + 3, 2.8 * len(trains) * len(blocks)), layout="constrained")
    for t, train in enumerate(trains):
        for b, (value, ylabel) in enumerate(blocks):
            row = axes[t * len(blocks) + b]
            for ax, solver in zip(row, solvers):
                nfes = sorted(set(table.loc[table["base_sampler"] == solver, "nfe"]))
                _nfe_panel(ax, table[(table["train_rationale"] == train) & (table["base_sampler"] == solver)], value,
                           palette, made, experiment, dodge=len(nfes) == 1)
                if value == "fid":
                    _published_markers(ax, experiment.get("published", {}).get(train, []),
                                       sweep.get("solvers", {}).get(solver, solver))
                seeded = int(table.loc[table["train_rationale"] == train, "seeds"].max())
                ax.set(xscale="log", title=f"{solver} — {_label(experiment, train)}"
                       + (f" ({seeded} seeds)" if seeded > 1 else "") if b == 0 else "")
                ax.set_xticks(nfes, [str(n) for n in nfes])
                if len(nfes) == 1:  # one point: room either side of it
                    ax.set_xlim(nfes[0] / 1.5, nfes[0] * 1.5)
                ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
                _fid_axis(ax, table.loc[table["base_sampler"] == solver, value])
            row[0].set_ylabel(ylabel)
    for ax in axes[-1]:
        ax.set_xlabel("NFE per image")
    handles = {}
    for ax in axes.ravel():
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside right center", fontsize=7,
                   title=f"schedule (step {', '.join(str(sweep['checkpoint'][t]) for t in trains)})")
    _save(fig, outdir, name)


NFE_DODGE = 1.03  # one NFE in a panel: each schedule's point this factor apart on the log axis, so bars do not overlap


def _nfe_panel(ax, table: pd.DataFrame, value: str, palette: Mapping[str, Any], made: set,
               experiment: FigureInputs, dodge: bool = False) -> None:
    """One solver's schedules against NFE: a line each with its interval as a band (degenerate points left out);
    `dodge`: the schedules' points side by side around their one NFE, in the palette's order."""
    order = list(palette)
    for sample, line in table.groupby("sample_rationale", sort=False):
        line = line[(line["degenerate"] == "") & line[value].notna()].sort_values("nfe")
        if line.empty:
            continue
        fitted = sample in made
        x = line["nfe"] * NFE_DODGE ** (order.index(sample) - (len(order) - 1) / 2) if dodge else line["nfe"]
        ax.plot(x, line[value], "--" if fitted else "-", marker="D" if fitted else "o", ms=4 if fitted else 3,
                color=palette[sample], label=_label(experiment, sample))
        if line[f"{value}_lo"].notna().any() and len(line) > 1:
            ax.fill_between(x, line[f"{value}_lo"], line[f"{value}_hi"], color=palette[sample], alpha=0.15,
                            lw=0)
        elif line[f"{value}_lo"].notna().any():  # one point (a grid fitted for it): its interval as an error bar
            ax.errorbar(x, line[value], yerr=[line[value] - line[f"{value}_lo"],
                                                        line[f"{value}_hi"] - line[value]],
                        color=palette[sample], capsize=3, lw=1, ls="none")


def _published_markers(ax, rows: Sequence[Mapping[str, Any]], solver: str) -> None:
    """A published network's published FIDs of this solver, a marker per schedule (and source)."""
    mine = [r for r in rows if r["solver"] == solver]
    markers = {s: "xP*Dv^<>"[i % 8] for i, s in enumerate(dict.fromkeys(r["schedule"] for r in mine))}
    for schedule, marker in markers.items():
        points = [r for r in mine if r["schedule"] == schedule]
        ax.plot([r["nfe"] for r in points], [r["fid"] for r in points], marker, color="black", ms=5, ls="none",
                label=f"published: {schedule} ({points[0]['source'].split(',')[0]})")


def fig_loss_by_sigma(losses: Mapping[str, pd.DataFrame], experiment: FigureInputs, outdir: Path, name: str) -> None:
    """Training ε-loss against σ (log-σ bins) per training rationale, a line per log interval (darker: later).
    Pretrained models have no training here, and no column."""
    trains = [t for t in experiment["train"] if t not in experiment.get("pretrained", [])]
    fig, axes = plt.subplots(1, len(trains), figsize=(4.2 * len(trains) + 1.5, 3.6), squeeze=False, sharey=True,
                             layout="constrained")
    last = max((int(t["step"].max()) for t in losses.values() if len(t)), default=1)
    cmap = plt.get_cmap("viridis")
    for ax, train in zip(axes[0], trains):
        table = losses.get(train, pd.DataFrame(columns=["step", "sigma_lo", "sigma_hi", "loss", "count"]))
        for step, line in table.groupby("step"):
            centre = np.sqrt(line["sigma_lo"].clip(lower=1e-4) * line["sigma_hi"].clip(upper=1e4))
            ax.plot(centre, line["loss"], color=cmap(step / last), lw=1)
        ax.set(xscale="log", yscale="log", xlabel="σ", title=f"trained with {_label(experiment, train)}")
    axes[0][0].set_ylabel("ε-loss ‖ε̂ − ε‖² (mean per pixel)")
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, last), cmap=cmap),
                 ax=axes[0].tolist(), label="training step")
    _save(fig, outdir, name)


def fig_nll(summary: pd.DataFrame, metrics: pd.DataFrame, experiment: FigureInputs, outdir: Path, name: str) -> None:
    """NLL (bits/dim ± standard error) over training per training rationale, next to its FID (sampled with the
    same rationale where the single sets hold it, else the first; first sampler)."""
    trains, single = experiment["train"], experiment["single"]
    sampler = single["samplers"][0]
    fid = per_checkpoint(protocol_rows(metrics, single))
    palette = _palette(trains)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    for train in trains:
        line = summary[summary["train_rationale"] == train].sort_values("checkpoint_step")
        rationale = experiment.get("seeds", {}).get(train, (train, 0))[0]
        own = rationale if rationale in single["rationales"] else single["rationales"][0]
        curve = fid[(fid["train_rationale"] == rationale) & (fid["sample_rationale"] == own)
                    & (fid["sampler_name"] == sampler)].sort_values("checkpoint_step")
        if train in experiment.get("pretrained", []):  # one checkpoint: a level across the training axis
            for ax, values in ((axes[0], line["bpd"]), (axes[1], curve["fid_mean"])):
                if len(values):
                    ax.axhline(float(values.iloc[0]), ls="--", color=palette[train],
                               label=f"{_label(experiment, train)} (pretrained)")
            continue
        axes[0].errorbar(line["checkpoint_step"], line["bpd"], yerr=line["bpd_se"], marker="o", ms=3, capsize=2,
                         color=palette[train], label=_label(experiment, train))
        axes[1].plot(curve["checkpoint_step"], curve["fid_mean"], marker="o", ms=3, color=palette[train],
                     label=f"{_label(experiment, train)} → {_label(experiment, own)}")
    axes[0].set(xlabel="training step", ylabel="NLL (bits/dim) ↓", title="(a) likelihood, probability-flow ODE")
    axes[1].set(xlabel="training step", ylabel="FID ↓", title=f"(b) FID, {sampler}, one set per checkpoint")
    _fid_axis(axes[1], fid["fid_mean"])
    for ax in axes:
        ax.legend(fontsize=7)
    _save(fig, outdir, name)


def write_figures(metrics_path: str | Path, experiment: FigureInputs, schedule_paths: Sequence[str],
                  loss_paths: Sequence[str], root: str | Path, outdir: str | Path, nll_paths: Sequence[str] = (),
                  density_paths: Sequence[str] = ()) -> None:
    """Every figure of ied.layout.artefacts(experiment) as PNG and PDF into `outdir`."""
    sns.set_theme(style="whitegrid", context="paper")
    outdir, names = Path(outdir), experiment["artefacts"]["figures"]
    metrics = pd.read_parquet(metrics_path)
    schedules = {Path(p).stem: pd.read_parquet(p) for p in schedule_paths}
    schedules = {n: schedules[n] for n in experiment["schedules"] if n in schedules}
    losses: dict[str, list] = {}
    for path in loss_paths:  # losses/<train>/loss-<step>.parquet
        losses.setdefault(Path(path).parent.name, []).append(pd.read_parquet(path))
    losses = {k: pd.concat(v, ignore_index=True) for k, v in losses.items()}
    densities = read_densities(density_paths)
    draw: dict[str, Callable[[str], None]] = {
        "rationales": lambda n: fig_rationales(schedules, experiment, outdir, n),
        "marginals": lambda n: fig_marginals(schedules, experiment, outdir, n),
        "over_training": lambda n: fig_over_training(metrics, experiment, outdir, n),
        "ablation": lambda n: fig_ablation(metrics, experiment, outdir, n),
        "over_sets": lambda n: fig_over_sets(metrics, experiment, outdir, n),
        "samples": lambda n: fig_samples(metrics, experiment, Path(root), outdir, n),
        "comparison": lambda n: fig_paper_comparison(metrics, experiment, outdir, n),
        "nfe": lambda n: fig_fid_nfe(metrics, experiment, outdir, n),
        "loss_by_sigma": lambda n: fig_loss_by_sigma(losses, experiment, outdir, n),
        "adaptive": lambda n: fig_adaptive_density(densities, schedules, experiment, outdir, n),
        "nll": lambda n: fig_nll(nll_summary(nll_paths), metrics, experiment, outdir, n),
    }
    for role, name in names.items():
        draw[role](name)


def read_densities(paths: Sequence[str]) -> dict[str, tuple[pd.DataFrame, dict]]:
    """Density tables (ied.layout.DENSITY) by adaptive model: every segment's rows, and the adaptive spec."""
    out: dict[str, tuple[list, dict]] = {}
    for path in paths:  # densities/<train>/density-<step>.parquet
        spec, _, rows = read_density(path)
        out.setdefault(Path(path).parent.name, ([], spec))[0].append(rows)
    return {k: (pd.concat(v, ignore_index=True), spec) for k, (v, spec) in out.items()}
