"""Tables 1–4 of the paper, each from the sample sets the paper used, and FID against NFE.

Table 1/2 (`single`): per (sampler, training, sampling) cell the best FID over the single-set checkpoints,
with the Inception Score (mean ± std over its splits), precision and recall at that checkpoint. `*` marks a
score within the standard deviations of the table's best, the deviations taken from the repeated
evaluations (the paper's caption). Table 3/4 (`repeated`): FID mean ± std over the k sets at each cell's
best checkpoint within the repeated range; `*` marks a mean ± std overlapping the best's. A degenerate
sample set (constant or all-alike images) is shown but never ranked.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import pandas as pd

from ied.io import atomic_path, write_text
from ied.latex import escape as latex_escape

if TYPE_CHECKING:
    from ied.layout import TableInputs

CELL_KEYS = ["sampler_name", "train_rationale", "sample_rationale"]
TITLES = {"fid": "FID ↓", "isc": "IS ↑", "precision": "Precision ↑", "recall": "Recall ↑"}


# --- selecting and summarising the metric rows of a protocol -----------------------------------------------
def protocol_rows(metrics: pd.DataFrame, protocol: Mapping[str, Any]) -> pd.DataFrame:
    """The rows a protocol (single or repeated sets) is made of: its size, sets, checkpoints, models and names; a
    trained model's rows under its training rationale, with its seed (`train_seed`; a published network's: 0)."""
    keep = ((metrics["n_samples"] == protocol["n_samples"]) & (metrics["seed_set"] < protocol["sets"])
            & metrics["checkpoint_step"].isin(protocol["steps"]) & metrics["train_rationale"].isin(protocol["train"])
            & metrics["sample_rationale"].isin(protocol["rationales"])
            & metrics["sampler_name"].isin(protocol["samplers"]))
    return by_training_rationale(metrics[keep], protocol.get("seeds", {}))


def by_training_rationale(rows: pd.DataFrame, seeds: Mapping[str, Sequence]) -> pd.DataFrame:
    """Rows of each model under its training rationale (`train_rationale`), its seed in `train_seed`."""
    model = rows["train_rationale"]
    return rows.assign(train_rationale=model.map(lambda m: seeds.get(m, (m, 0))[0]),
                       train_seed=model.map(lambda m: int(seeds.get(m, (m, 0))[1])))


def per_checkpoint(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (sampler, training rationale, sampling rationale, checkpoint): with one training seed, the mean and std
    over sets (degenerate if any set is); with several, the mean over seeds of each seed's mean over sets, and the std
    over seeds (`seeds`, and each seed's FID in `fid_seeds`).

    With one set of one seed, `isc_std` is torch-fidelity's std over the 10 IS splits (the paper's IS ± std)."""
    rows = rows if "train_seed" in rows else rows.assign(train_seed=0)
    summary = _per_seed(rows)
    if summary.empty or summary["train_seed"].nunique() == 1 and not summary.duplicated(
            CELL_KEYS + ["checkpoint_step"]).any():
        return summary.assign(seeds=1, fid_seeds=summary["fid_mean"].map(lambda v: [v])).drop(columns="train_seed")
    seeded = summary.groupby(CELL_KEYS + ["checkpoint_step"]).apply(_cell_over_seeds, include_groups=False)
    seeded = seeded.reset_index()
    return seeded.astype({c: float for c in _summary_columns() if c not in ("sets", "degenerate", "seeds", "fid_seeds")}
                         | {"sets": int, "seeds": int})


def _summary_columns() -> list[str]:
    """A cell's summary over sets and seeds, column by column."""
    return ["sets", "degenerate", "fid_mean", "fid_std", "fid_min", "isc_mean", "isc_std", "kid_mean", "precision",
            "recall", *INTERVAL_COLUMNS, "seeds", "fid_seeds"]


def _cell_over_seeds(g: pd.DataFrame) -> pd.Series:
    """One cell at one checkpoint over its seeds: the means over seeds, their std for FID and IS."""
    if len(g) == 1:  # this cell has one seed (others have more): as it is
        one = {**g.iloc[0].to_dict(), "seeds": 1, "fid_seeds": [float(g["fid_mean"].iloc[0])]}
        return pd.Series([one[c] for c in _summary_columns()], index=_summary_columns(), dtype=object)
    means = {c: g[c].mean() for c in ("fid_mean", "fid_min", "isc_mean", "kid_mean", "precision", "recall")}
    degenerate = "; ".join(sorted({d for d in g["degenerate"] if d}))
    out = {"sets": int(g["sets"].iloc[0]), "degenerate": degenerate, **means, "fid_std": g["fid_mean"].std(ddof=1),
           "isc_std": g["isc_mean"].std(ddof=1), **{c: math.nan for c in INTERVAL_COLUMNS}, "seeds": len(g),
           "fid_seeds": [float(v) for v in g["fid_mean"]]}
    return pd.Series([out[c] for c in _summary_columns()], index=_summary_columns(), dtype=object)


def _per_seed(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over sets per (sampler, train, sample, checkpoint, seed); degenerate if any set is."""
    def summarize(g: pd.DataFrame) -> pd.Series:
        one = len(g) == 1
        return pd.Series({
            "sets": len(g), "degenerate": "; ".join(sorted({d for d in g["degenerate"] if d})),
            "fid_mean": g["fid"].mean(), "fid_std": math.nan if one else g["fid"].std(ddof=1),
            "fid_min": g["fid"].min(),
            "isc_mean": g["isc_mean"].mean(), "isc_std": g["isc_std"].iloc[0] if one else g["isc_mean"].std(ddof=1),
            "kid_mean": g["kid_mean"].mean(), "precision": g["precision"].mean(), "recall": g["recall"].mean(),
            **{c: g[c].iloc[0] if one else math.nan for c in INTERVAL_COLUMNS}})  # one set's bootstrap interval
    rows = rows.assign(**{c: rows[c] if c in rows else math.nan for c in INTERVAL_COLUMNS})  # rows before intervals
    if rows.empty:
        return pd.DataFrame(columns=CELL_KEYS + ["checkpoint_step", "train_seed", "sets", "degenerate", "fid_mean",
                                                 "fid_std", "fid_min", "isc_mean", "isc_std", "kid_mean", "precision",
                                                 "recall", *INTERVAL_COLUMNS])
    return rows.groupby(CELL_KEYS + ["checkpoint_step", "train_seed"]).apply(summarize, include_groups=False
                                                                             ).reset_index()


def best_checkpoints(summary: pd.DataFrame) -> pd.DataFrame:
    """Each cell at its lowest-FID checkpoint; a degenerate checkpoint is chosen only if nothing else is left."""
    if summary.empty:
        return summary
    rank = summary["fid_mean"].where(summary["degenerate"] == "", math.inf).fillna(math.inf)
    return summary.loc[rank.groupby([summary[k] for k in CELL_KEYS]).idxmin()].reset_index(drop=True)


def _ordered(frame: pd.DataFrame, experiment: TableInputs, rationales: Sequence[str]) -> pd.DataFrame:
    """Rows in the config's order (samplers, training, sampling), with display labels joined by name."""
    labels, seeds = experiment["labels"], experiment.get("seeds", {})
    trains = list(dict.fromkeys(seeds.get(m, (m, 0))[0] for m in experiment["train"]))  # models by training rationale
    order = {"sampler_name": experiment["samplers"], "train_rationale": trains, "sample_rationale": rationales}
    frame = frame.assign(train_label=frame["train_rationale"].map(lambda n: labels.get(n, n)),
                         sample_label=frame["sample_rationale"].map(lambda n: labels.get(n, n)))
    return frame.sort_values(CELL_KEYS, key=lambda c: c.map({n: i for i, n in enumerate(order[c.name])}),
                             kind="stable").reset_index(drop=True)


def single_table(metrics: pd.DataFrame, experiment: TableInputs) -> pd.DataFrame:
    """Table 1/2: best single-set FID per cell, IS, precision and recall there; repeated-set stds for `*`."""
    best = best_checkpoints(per_checkpoint(protocol_rows(metrics, experiment["single"])))
    repeated = best_checkpoints(per_checkpoint(protocol_rows(metrics, experiment["repeated"])))
    spread = repeated[CELL_KEYS + ["fid_std", "isc_std"]].rename(
        columns={"fid_std": "fid_std_repeated", "isc_std": "isc_std_repeated"})
    best = best.merge(spread, on=CELL_KEYS, how="left").rename(columns={"fid_mean": "fid"})
    best = _seed_spread(best)
    columns = CELL_KEYS + ["checkpoint_step", "fid", "isc_mean", "isc_std", "precision", "recall", "kid_mean",
                           "fid_std_repeated", "isc_std_repeated", *INTERVAL_COLUMNS, "seeds", "fid_seeds",
                           "degenerate"]
    return _ordered(best[columns], experiment, experiment["single"]["rationales"])


def _seed_spread(best: pd.DataFrame) -> pd.DataFrame:
    """A cell of several training seeds is its seeds' mean, its spread mean ± std over seeds (in place of one set's
    bootstrap interval); FID and IS."""
    several = best["seeds"] > 1
    out = best.copy()
    for value, std in (("fid", "fid_std"), ("isc_mean", "isc_std")):
        out.loc[several, f"{value}_lo"] = best.loc[several, value] - best.loc[several, std]
        out.loc[several, f"{value}_hi"] = best.loc[several, value] + best.loc[several, std]
    return out


def repeated_table(metrics: pd.DataFrame, experiment: TableInputs) -> pd.DataFrame:
    """Table 3/4: FID mean ± std over the repeated sets at each cell's best checkpoint in the repeated range."""
    best = best_checkpoints(per_checkpoint(protocol_rows(metrics, experiment["repeated"])))
    columns = CELL_KEYS + ["checkpoint_step", "sets", "fid_mean", "fid_std", "fid_min", "isc_mean", "isc_std",
                           "precision", "recall", "degenerate"]
    return _ordered(best[columns], experiment, experiment["repeated"]["rationales"])


DISTANCE_COLUMNS = ["ref_rmse", "ref_rmse_lo", "ref_rmse_hi", "ref_rmse_std", "ref_rmse_p10", "ref_rmse_median",
                    "ref_rmse_p90"]
INTERVAL_COLUMNS = [f"{score}_{end}" for score in ("fid", "isc_mean", "kid_mean", "precision", "recall")
                    for end in ("lo", "hi")]


def _resamples(metrics: pd.DataFrame) -> str:
    """The resample counts behind the intervals, as the note names them."""
    counts = sorted({int(b) for b in metrics.get("bootstrap", pd.Series(dtype=float)).dropna()})
    return "/".join(map(str, counts)) or "no"


def nfe_table(metrics: pd.DataFrame, experiment: TableInputs) -> pd.DataFrame:
    """FID against the number of denoiser evaluations per image: one row per sweep point."""
    sweep = experiment["sweep"]
    points = sweep["points"]
    at_its_checkpoint = metrics["checkpoint_step"] == metrics["train_rationale"].map(sweep["checkpoint"])
    rows = metrics[at_its_checkpoint & (metrics["n_samples"] == sweep["n_samples"])
                   & (metrics["seed_set"] == 0) & metrics["sampler_name"].isin(points)
                   & metrics["train_rationale"].isin(sweep["train"]) & metrics["sample_rationale"].isin(sweep["rationales"])]
    rows = rows.assign(base_sampler=rows["sampler_name"].map(lambda n: points[n]["sampler"]))
    rows = rows.assign(**{c: rows[c] if c in rows else math.nan for c in DISTANCE_COLUMNS + INTERVAL_COLUMNS})
    columns = ["train_rationale", "sample_rationale", "base_sampler", "sampler_name", "steps", "nfe", "fid",
               "isc_mean", "precision", "recall", *INTERVAL_COLUMNS, *DISTANCE_COLUMNS, "degenerate"]
    labels = experiment["labels"]
    rows = rows[columns].assign(train_label=rows["train_rationale"].map(lambda n: labels.get(n, n)),
                                sample_label=rows["sample_rationale"].map(lambda n: labels.get(n, n)))
    return rows.sort_values(["train_rationale", "base_sampler", "sample_rationale", "nfe"]).reset_index(drop=True)


# --- the paper's '*' and bold ------------------------------------------------------------------------------
def overlapping(values: pd.Series, lo: pd.Series, hi: pd.Series, lower_is_better: bool, usable: pd.Series
                ) -> tuple[pd.Series, Any]:
    """The best usable cell's index and the '*' marks: a cell whose interval [lo, hi] overlaps the best's (best
    excluded): the two are not separated at that confidence. A cell without an interval is never starred."""
    candidates = values.where(usable)
    if candidates.isna().all():
        return pd.Series(False, index=values.index), None
    best = candidates.idxmin() if lower_is_better else candidates.idxmax()
    overlap = (lo <= hi[best]) & (hi >= lo[best])
    return overlap & lo.notna() & hi.notna() & usable & (values.index != best), best


def starred(values: pd.Series, stds: pd.Series, lower_is_better: bool, usable: pd.Series) -> tuple[pd.Series, Any]:
    """The best usable cell's index and the '*' marks: value ± std overlaps best ± std (best excluded).

    A cell without a standard deviation is never starred."""
    candidates = values.where(usable)
    if candidates.isna().all():
        return pd.Series(False, index=values.index), None
    best = candidates.idxmin() if lower_is_better else candidates.idxmax()
    best_std = 0.0 if pd.isna(stds[best]) else stds[best]
    overlap = (values - values[best]).abs() <= stds + best_std
    return overlap & stds.notna() & usable & (values.index != best), best


@dataclass
class Entry:
    """One table cell: a value, its ± std (or NaN), the paper's '*' and bold marks, and its number format."""

    value: float
    std: float = math.nan
    star: bool = False
    bold: bool = False
    degenerate: bool = False
    fmt: str = ".2f"

    def markdown(self) -> str:
        if self.degenerate:
            return "degenerate"
        if math.isnan(self.value):
            return "—"
        text = f"**{self.value:{self.fmt}}**" if self.bold else f"{self.value:{self.fmt}}"
        return text + ("*" if self.star else "") + ("" if math.isnan(self.std) else f" ± {self.std:{self.fmt}}")

    def latex(self) -> str:
        if self.degenerate:
            return r"\textit{degenerate}"
        if math.isnan(self.value):
            return "--"
        text = rf"\textbf{{{self.value:{self.fmt}}}}" if self.bold else f"{self.value:{self.fmt}}"
        return text + ("$^*$" if self.star else "") + ("" if math.isnan(self.std) else
                                                      rf" $\pm$ {self.std:{self.fmt}}")


def grids(table: pd.DataFrame, value: str, std: str | None, star_std: str | None, lower: bool,
          interval: str | None = None) -> dict[str, pd.DataFrame]:
    """Per sampler, a training × sampling grid of Entries; bold best and '*' within that sampler's grid: by the
    overlap of the bootstrap intervals `<interval>_lo`, `_hi` where the cells have them (± half an interval's
    width), else by the standard deviations as the paper marks them."""
    out = {}
    for sampler, frame in table.groupby("sampler_name", sort=False):
        frame = frame.reset_index(drop=True)
        usable = frame["degenerate"] == ""
        stds = frame[std] if std else pd.Series(math.nan, index=frame.index)
        if interval and frame[f"{interval}_lo"].notna().any():
            lo, hi = frame[f"{interval}_lo"], frame[f"{interval}_hi"]
            stds = (hi - lo) / 2
            stars, best = overlapping(frame[value], lo, hi, lower, usable)
        else:
            stars, best = starred(frame[value], frame[star_std] if star_std else stds, lower, usable)
        frame["entry"] = [Entry(v, s, bool(st), i == best, not ok) for i, (v, s, st, ok) in
                          enumerate(zip(frame[value], stds, stars, usable))]
        grid = frame.pivot(index="train_label", columns="sample_label", values="entry")
        out[str(sampler)] = grid.loc[list(dict.fromkeys(frame["train_label"])), list(dict.fromkeys(frame["sample_label"]))]
    return out


# --- rendering ------------------------------------------------------------------------------------------
def to_markdown(grid: pd.DataFrame) -> str:
    frame = grid.map(lambda e: e.markdown())
    frame.index.name = "Training \\ Sampling"
    return frame.to_markdown(disable_numparse=True)  # "12.00" stays "12.00"


def to_latex(grid: pd.DataFrame, caption: str) -> str:
    """A booktabs tabular (bold best, '*' as the paper prints it)."""
    cols = "l" + "c" * len(grid.columns)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(caption)}}}",
             rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
             r"Training $\backslash$ Sampling & " + " & ".join(latex_escape(c) for c in grid.columns) + r" \\",
             r"\midrule"]
    lines += [latex_escape(idx) + " & " + " & ".join(e.latex() for e in row) + r" \\" for idx, row in grid.iterrows()]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def _write(outdir: Path, name: str, frame: pd.DataFrame, sections: list[tuple[str, dict[str, pd.DataFrame]]],
           caption: str, note: str) -> None:
    with atomic_path(outdir / f"{name}.parquet") as tmp:
        frame.to_parquet(tmp, index=False)
    md, tex = [f"## {caption}", ""], []
    for title, per_sampler in sections:
        for sampler, grid in per_sampler.items():
            md += [f"### {title} — sampler `{sampler}`", "", to_markdown(grid), ""]
            tex.append(to_latex(grid, f"{caption} {title}, sampler {sampler}."))
    write_text(outdir / f"{name}.md", "\n".join(md + [note, ""]))
    write_text(outdir / f"{name}.tex", "\n".join(tex))


def nll_summary(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Mean bits/dim ± standard error over images (probes averaged per image) per training rationale and checkpoint."""
    from ied.nll import summarize

    rows = []
    for path in paths:  # nll/<train>/nll-<step>.parquet (ied.layout.NLL)
        frame = pd.read_parquet(path)
        rows.append({"train_rationale": Path(path).parent.name, "checkpoint_step": int(frame["checkpoint_step"].iloc[0]),
                     **summarize(frame), "nfe_per_image": frame["nfe"].mean(),
                     "images": frame["image"].nunique(), "probes": frame["probe"].nunique()})
    return pd.DataFrame(rows, columns=["train_rationale", "checkpoint_step", "bpd", "bpd_se", "nfe_per_image",
                                       "images", "probes"])


def nll_table(summary: pd.DataFrame, single: pd.DataFrame, experiment: TableInputs) -> pd.DataFrame:
    """NLL per training rationale at its best-FID checkpoint (its best Table 1/2 cell, first sampler) and its last.

    A model whose single-set cells are all degenerate has no best-FID checkpoint (`best_fid_step` is missing)."""
    sampler = experiment["single"]["samplers"][0]
    rows = []
    for train in experiment["train"]:
        mine = summary[summary["train_rationale"] == train].set_index("checkpoint_step")
        rationale = experiment.get("seeds", {}).get(train, (train, 0))[0]  # a seed's best: its rationale's (seed mean)
        cells = single[(single["train_rationale"] == rationale) & (single["sampler_name"] == sampler)
                       & (single["degenerate"] == "")]
        best = int(cells.loc[cells["fid"].idxmin(), "checkpoint_step"]) if len(cells) else None
        last = max(experiment["nll_steps"][train])
        row = {"train_rationale": train, "train_label": experiment["labels"].get(train, train), "best_fid_step": best,
               "last_step": last}
        for key, step in (("best_fid", best), ("last", last)):
            found = step is not None and step in mine.index
            row[f"bpd_{key}"] = mine.loc[step, "bpd"] if found else math.nan
            row[f"bpd_se_{key}"] = mine.loc[step, "bpd_se"] if found else math.nan
        rows.append(row)
    return pd.DataFrame(rows).astype({"best_fid_step": "Int64", "last_step": "int64"})


NLL_NOTE = ("Negative log-likelihood of the held-out split's images (a fixed subset), log p(x | y), through the "
            "probability-flow ODE (ied.nll): mean ± standard error over images (the probes of an image averaged "
            "first). `not computed`: that checkpoint is not among nll.checkpoints. `no usable cell`: every single-set "
            "sample set of this model is degenerate, so it has no best-FID checkpoint.")


def _write_nll(stem: Path, table: pd.DataFrame) -> None:
    with atomic_path(stem.with_suffix(".parquet")) as tmp:
        table.to_parquet(tmp, index=False)

    def cell(mean: float, se: float, step: Any) -> str:
        if pd.isna(step):
            return "no usable cell"
        return "not computed" if math.isnan(mean) else f"{mean:.3f} ± {se:.3f}"

    shown = pd.DataFrame({
        "best-FID step": ["—" if pd.isna(s) else str(int(s)) for s in table["best_fid_step"]],
        "NLL there (bits/dim)": [cell(m, s, step) for m, s, step in
                                 zip(table["bpd_best_fid"], table["bpd_se_best_fid"], table["best_fid_step"])],
        "last step": [str(int(s)) for s in table["last_step"]],
        "NLL at the last step (bits/dim)": [cell(m, s, step) for m, s, step in
                                            zip(table["bpd_last"], table["bpd_se_last"], table["last_step"])]},
        index=pd.Index(table["train_label"], name="Training"))
    markdown = shown.to_markdown(disable_numparse=True)
    write_text(stem.with_suffix(".md"), "\n".join(["## NLL per training rationale", "", markdown, "", NLL_NOTE, ""]))
    body = [" & ".join(latex_escape(str(v)) for v in [idx, *row]) + r" \\" for idx, row in shown.iterrows()]
    write_text(stem.with_suffix(".tex"), "\n".join([
        r"\begin{table}[t]", r"\centering", r"\caption{NLL (bits/dim) per training rationale.}",
        r"\begin{tabular}{lcccc}", r"\toprule", "Training & " + " & ".join(latex_escape(c) for c in shown.columns)
        + r" \\", r"\midrule", *body, r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]))


def write_tables(metrics_path: str | Path, experiment: TableInputs, outdir: str | Path,
                 nll_paths: Sequence[str | Path] = ()) -> None:
    """The run's tables by the paper's numbers (ied.layout.artefacts): single, repeated, and if configured FID vs NFE
    and NLL."""
    metrics, outdir, names = pd.read_parquet(metrics_path), Path(outdir), experiment["artefacts"]["tables"]
    single = single_table(metrics, experiment)
    n, k, m = experiment["single"]["n_samples"], experiment["repeated"]["sets"], experiment["repeated"]["n_samples"]
    pretrained = ("A pretrained model has one checkpoint, its published weights (step 0). "
                  if experiment.get("pretrained") else "")
    sections = [(TITLES["fid"], grids(single, "fid", None, "fid_std_repeated", True, "fid")),
                (TITLES["isc"], grids(single, "isc_mean", "isc_std", "isc_std_repeated", False, "isc_mean"))]
    # against published reference statistics there are no reference features: no precision or recall
    sections += [(TITLES[key], grids(single, key, None, None, False, key)) for key in ("precision", "recall")
                 if single[key].notna().any()]
    seeded = (" A cell of several training seeds (`seeds` in the Parquet file, each seed's FID in `fid_seeds`) is "
              "their mean ± std over seeds, its best checkpoint the seeds' mean's, and its spread that interval."
              if (single["seeds"] > 1).any() else "")
    marks = (f"`*`: its 95 % interval (bootstrap over the generated images, {_resamples(metrics)} resamples) overlaps "
             f"the best's (bold), ± half the interval's width; without intervals, within the standard deviations "
             f"(over the {experiment['repeated']['sets']} repeated sets of {experiment['repeated']['n_samples']}) "
             f"of the best score.{seeded}" if single["fid_lo"].notna().any() else
             f"`*`: within the standard deviations (over the {experiment['repeated']['sets']} repeated sets of "
             f"{experiment['repeated']['n_samples']}) of the best score (bold).")
    _write(outdir, names["single"], single, sections,
           f"Best FID recorded during training ({n} samples, one set per checkpoint), and IS, precision and "
           f"recall at that checkpoint.",
           f"{pretrained}{marks} `degenerate`: constant, all-alike or clipped samples, never ranked.")
    repeated = repeated_table(metrics, experiment)
    _write(outdir, names["repeated"], repeated,
           [(TITLES["fid"], grids(repeated, "fid_mean", "fid_std", "fid_std", True)),
            (f"FID, the lowest of the {k} sets ↓", grids(repeated, "fid_min", None, None, True))],
           f"FID mean ± std over {k} sets of {m} samples at each cell's best checkpoint "
           f"(up to step {max(experiment['repeated']['steps'])}).",
           f"{pretrained}`*`: mean ± std overlaps the best's (bold). The lowest of the sets is how EDM reports FID. "
           f"`degenerate`: constant or all-alike samples, never ranked.")
    if "nfe" in names:
        _write_nfe(outdir / names["nfe"], nfe_table(metrics, experiment), experiment)
    if "nll" in names:
        _write_nll(outdir / names["nll"], nll_table(nll_summary(nll_paths), single, experiment))


def nfe_grid(frame: pd.DataFrame, value: str = "fid", fmt: str = ".2f") -> pd.DataFrame:
    """One model's sweep as the literature prints it: rows solver / schedule, columns NFE, Entries of `value` with the
    lowest usable one of each column in bold (None where a solver does not make that NFE)."""
    frame = frame.reset_index(drop=True).assign(row=frame["base_sampler"].values + " / " + frame["sample_label"].values)
    rows, columns = list(dict.fromkeys(frame["row"])), sorted(set(frame["nfe"]))
    grid = pd.DataFrame(None, index=rows, columns=columns, dtype=object)
    for nfe, column in frame.groupby("nfe"):
        usable = (column["degenerate"] == "") & column[value].notna()
        nan = pd.Series(math.nan, index=column.index)
        lo, hi = column.get(f"{value}_lo", nan), column.get(f"{value}_hi", nan)
        stars, best = overlapping(column[value], lo, hi, True, usable)
        for i, line in column.iterrows():  # a degenerate set has no FID to show; its distance is still one
            grid.loc[line["row"], nfe] = Entry(line[value], (hi[i] - lo[i]) / 2, bool(stars[i]), i == best,
                                               value == "fid" and line["degenerate"] != "", fmt)
    return grid


def nfe_over_seeds(table: pd.DataFrame, seeds: Mapping[str, Sequence]) -> pd.DataFrame:
    """The sweep's rows by training rationale: a point of a rationale trained with several seeds is their mean, its
    interval the mean ± std over seeds (FID and ref_rmse), `seeds` how many; one seed's row as it is."""
    table = table.assign(training_rationale=table["train_rationale"].map(lambda m: seeds.get(m, (m, 0))[0]), seeds=1)
    if table.empty:
        return table
    keys = ["training_rationale", "base_sampler", "sample_rationale", "nfe"]
    out = []
    for _, group in table.groupby(keys, sort=False):
        row = group.iloc[0].copy()
        row["seeds"] = len(group)
        if len(group) > 1:
            for value in ("fid", "ref_rmse"):
                mean, std = group[value].mean(), group[value].std(ddof=1)
                row[value], row[f"{value}_lo"], row[f"{value}_hi"] = mean, mean - std, mean + std
            row["degenerate"] = "; ".join(sorted({d for d in group["degenerate"] if d}))
        out.append(row)
    frame = pd.DataFrame(out).reset_index(drop=True)
    return frame.assign(train_rationale=frame["training_rationale"])


def _write_nfe(stem: Path, table: pd.DataFrame, experiment: TableInputs) -> None:
    with atomic_path(stem.with_suffix(".parquet")) as tmp:  # every model's (each seed's) rows
        table.to_parquet(tmp, index=False)
    seeds = experiment.get("seeds", {})
    table = nfe_over_seeds(table, seeds)
    labels = experiment["labels"]
    table = table.assign(train_label=table["train_rationale"].map(lambda n: labels.get(n, n)))
    several = table.loc[table["seeds"] > 1, "train_label"].unique()
    md, tex = ["## FID against the number of denoiser evaluations (NFE) per image", ""], []
    for train, frame in table.groupby("train_label", sort=False):
        if train in several:
            train = f"{train}, {int(frame['seeds'].max())} seeds (mean ± std over seeds)"
        blocks = [("FID", "fid", ".2f")]
        if frame["ref_rmse"].notna().any():
            blocks.append(("distance from the probability-flow solution (relative RMS, ref_rmse)", "ref_rmse", ".4f"))
        for title, value, fmt in blocks:
            grid = nfe_grid(frame, value, fmt)
            heads = [f"NFE {n}" for n in grid.columns]
            text = grid.map(lambda e: e.markdown() if isinstance(e, Entry) else "")
            text.columns, text.index.name = heads, "solver / schedule"
            md += [f"### trained with {train}: {title} (lowest of each NFE in bold)", "",
                   text.to_markdown(disable_numparse=True), ""]
            body = [" & ".join([latex_escape(r)] + [e.latex() if isinstance(e, Entry) else "" for e in row]) + r" \\"
                    for r, row in grid.iterrows()]
            tex += [r"\begin{table}[t]", r"\centering",
                    rf"\caption{{{latex_escape(title)} against NFE per image, trained with {latex_escape(train)} "
                    rf"(lowest of each NFE in bold).}}",
                    rf"\begin{{tabular}}{{l{'c' * len(heads)}}}", r"\toprule",
                    "Solver / schedule & " + " & ".join(heads) + r" \\", r"\midrule", *body,
                    r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    if table["fid_lo"].notna().any():
        md += ["± half a 95 % bootstrap interval (FID: over the generated images; ref_rmse: over the images measured), "
               "or, for a rationale trained with several seeds, the std over its seeds (each seed's row is in the "
               "Parquet file); `*`: the interval overlaps the bold (lowest) one of its column, so the two are not "
               "separated.", ""]
    if table["ref_rmse"].notna().any():
        md += ["`ref_rmse`: the relative RMS distance of a cell's first images (before quantisation) from the "
               "probability-flow solution from the same latents (Heun, checked against half its steps); `—`: a "
               "stochastic sampler, no such solution.", ""]
    write_text(stem.with_suffix(".md"), "\n".join(md))
    write_text(stem.with_suffix(".tex"), "\n".join(tex))


def write_report(tables: Sequence[str], figures: Sequence[str], out: str | Path) -> None:
    """A Markdown report: every table inline and every figure linked (Snakemake --report builds HTML)."""
    out = Path(out)
    lines = ["# Inverse Engineering Diffusion — results", ""]
    for path in tables:
        if path.endswith(".md"):  # the table's own "## caption" heading becomes the section's first paragraph
            lines += [f"## {Path(path).stem}", "", Path(path).read_text().removeprefix("## "), ""]
    lines += ["## Figures", ""]
    for path in figures:
        if path.endswith(".png"):
            lines += [f"![{Path(path).stem}]({os.path.relpath(path, out.parent)})", ""]
    write_text(out, "\n".join(lines))

