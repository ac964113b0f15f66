"""ied.tables on small hand-made metrics with known answers: best checkpoint, the '*' rule, protocols, LaTeX."""
import math

import pandas as pd
import pytest

from ied.data import DATASETS
from ied.tables import Entry, grids, repeated_table, single_table, starred, to_latex

GRID = {"train": ["ve", "l2"], "samplers": ["em"], "labels": {"ve": "VE", "l2": "L2", "g": "N(0,5²)", "e": "EDM (ρ=7)"},
        "single": {"train": ["ve", "l2"], "rationales": ["ve", "g"], "samplers": ["em"], "n_samples": 100, "sets": 1,
                   "steps": [10, 20, 30]},
        "repeated": {"train": ["ve", "l2"], "rationales": ["ve", "g", "e"], "samplers": ["em"], "n_samples": 100,
                     "sets": 2, "steps": [10, 20]}}


def row(train, sample, step, fid, seed=0, n=100, isc=2.0, isc_std=0.1, degenerate=""):
    return {"sampler_name": "em", "train_rationale": train, "sample_rationale": sample, "checkpoint_step": step,
            "seed_set": seed, "n_samples": n, "fid": fid, "isc_mean": isc, "isc_std": isc_std, "kid_mean": 0.0,
            "precision": 0.5, "recall": 0.5, "degenerate": degenerate}


def metrics():
    rows = []
    for train, offset in (("ve", 0.0), ("l2", 1.0)):
        for sample, base in (("ve", 10.0), ("g", 12.0), ("e", 20.0)):
            for step, shift in ((10, 3.0), (20, 0.0), (30, 5.0)):
                fid = base + offset + shift
                rows.append(row(train, sample, step, fid))  # set 0: the single set when the sizes agree
                rows.append(row(train, sample, step, fid + 0.4, seed=1))  # set 1 of the repeated sets
    rows.append(row("ve", "ve", 20, 1.0, n=50))  # another protocol's size: never part of these tables
    return pd.DataFrame(rows)


def test_single_table_takes_the_best_single_set_checkpoint():
    table = single_table(metrics(), GRID).set_index(["train_rationale", "sample_rationale"])
    assert list(table.index) == [("ve", "ve"), ("ve", "g"), ("l2", "ve"), ("l2", "g")]  # config order, no EDM
    assert table.loc[("ve", "ve"), "checkpoint_step"] == 20 and table.loc[("ve", "ve"), "fid"] == 10.0
    assert table.loc[("l2", "g"), "fid"] == 13.0
    # the stds for '*' come from the repeated sets at that cell's best repeated checkpoint: |10.4 − 10| / √2·…
    assert table.loc[("ve", "ve"), "fid_std_repeated"] == pytest.approx(pd.Series([10.0, 10.4]).std())


def test_repeated_table_is_mean_and_std_over_sets_within_its_range():
    table = repeated_table(metrics(), GRID).set_index(["train_rationale", "sample_rationale"])
    assert len(table) == 2 * 3 and (table["sets"] == 2).all()
    assert table.loc[("ve", "e"), "fid_mean"] == pytest.approx(20.2)  # step 20, mean of 20.0 and 20.4
    assert (table["checkpoint_step"] == 20).all()  # step 30 is outside the repeated range
    assert table.loc[("ve", "e"), "fid_std"] == pytest.approx(0.4 / math.sqrt(2))


def test_a_protocol_holds_only_its_models_though_another_model_has_sets_of_its_size():
    """A model outside the repeated protocol (its train_rationales) has single sets that look like repeated set 0:
    the repeated table leaves them out, and Table 1 keeps them without a repeated spread."""
    grid = {**GRID, "repeated": {**GRID["repeated"], "train": ["ve"]}}
    table = repeated_table(metrics(), grid)
    assert set(table["train_rationale"]) == {"ve"}
    single = single_table(metrics(), grid).set_index(["train_rationale", "sample_rationale"])
    assert single.loc[("l2", "ve"), "fid_std_repeated"] != single.loc[("l2", "ve"), "fid_std_repeated"]  # NaN
    assert not math.isnan(single.loc[("ve", "ve"), "fid_std_repeated"])


def test_star_rule_is_overlap_with_the_best():
    values = pd.Series([10.0, 10.3, 11.0, 10.1])
    stds = pd.Series([0.2, 0.2, 0.2, math.nan])
    stars, best = starred(values, stds, lower_is_better=True, usable=pd.Series([True] * 4))
    assert best == 0
    assert stars.tolist() == [False, True, False, False]  # 10.3 − 0.2 ≤ 10.0 + 0.2; 11 is outside; no std: no star
    stars, best = starred(values, stds, lower_is_better=False, usable=pd.Series([True] * 4))
    assert best == 2 and not stars.any()


def test_degenerate_cells_are_never_best_or_starred():
    frame = metrics()
    frame.loc[(frame["train_rationale"] == "ve") & (frame["sample_rationale"] == "ve"), "degenerate"] = "all black"
    table = single_table(frame, GRID)
    entries = grids(table, "fid", None, "fid_std_repeated", True)["em"]
    assert entries.loc["VE", "VE"].degenerate and entries.loc["VE", "VE"].markdown() == "degenerate"
    assert entries.loc["L2", "VE"].bold  # 11.0: the best usable cell
    assert not any(e.bold for e in entries.values.ravel() if e.degenerate)


def test_latex_bold_stars_and_non_ascii():
    assert Entry(11.94, 0.13, star=False, bold=True).latex() == r"\textbf{11.94} $\pm$ 0.13"
    assert Entry(9.28, 0.10, star=True).latex() == r"9.28$^*$ $\pm$ 0.10"
    assert Entry(9.28, 0.10, star=True, bold=False).markdown() == "9.28* ± 0.10"
    tex = to_latex(grids(single_table(metrics(), GRID), "fid", None, "fid_std_repeated", True)["em"], "FID ↓")
    assert tex.isascii() and r"\textbf{10.00}" in tex and "**" not in tex and r"$^*$$^*$" not in tex


def test_reference_split_is_test_for_cifar10_and_digits_val_for_imagenet32():
    assert {name: d.reference_split for name, d in DATASETS.items()} == {
        "digits": "test", "cifar10": "test", "imagenet32": "val",
        "ffhq64": None, "afhqv2_64": None, "imagenet64": None}  # scored against published statistics


def test_nll_table_at_the_best_fid_and_last_checkpoints(tmp_path):
    from ied.tables import _write_nll, nll_table
    summary = pd.DataFrame({"train_rationale": ["ve", "ve", "ve", "l2"], "checkpoint_step": [10, 20, 30, 30],
                            "bpd": [4.0, 3.5, 3.6, 3.2], "bpd_se": [0.1, 0.1, 0.1, 0.1]})
    grid = {**GRID, "nll_steps": {"ve": [10, 20, 30], "l2": [10, 20, 30]}}
    table = nll_table(summary, single_table(metrics(), grid), grid).set_index("train_rationale")
    assert table.loc["ve", "best_fid_step"] == 20 and table.loc["ve", "bpd_best_fid"] == 3.5  # FID is lowest at 20
    assert table.loc["ve", "last_step"] == 30 and table.loc["ve", "bpd_last"] == 3.6
    assert math.isnan(table.loc["l2", "bpd_best_fid"]) and table.loc["l2", "bpd_last"] == 3.2  # 20 not computed
    _write_nll(tmp_path / "nll", table.reset_index())
    text = (tmp_path / "nll.md").read_text()
    assert "| VE         | 20              | 3.500 ± 0.100" in text and "not computed" in text


def test_per_checkpoint_statistics_follow_their_definitions():
    from ied.tables import per_checkpoint
    rows = pd.DataFrame([row("ve", "ve", 10, 10.0, seed=0, isc=2.0, isc_std=0.7),
                         row("ve", "ve", 10, 12.0, seed=1, isc=2.6, isc_std=0.1, degenerate="constant"),
                         row("ve", "ve", 10, 13.0, seed=2, isc=2.3, isc_std=0.2, degenerate="all black"),
                         row("ve", "g", 10, 7.0, seed=0, isc=1.5, isc_std=0.4)])
    summary = per_checkpoint(rows).set_index("sample_rationale")
    three, one = summary.loc["ve"], summary.loc["g"]
    assert three["sets"] == 3 and three["fid_mean"] == pytest.approx(35 / 3) and three["fid_min"] == 10.0
    assert three["fid_std"] == pytest.approx(pd.Series([10.0, 12.0, 13.0]).std(ddof=1))  # sample std over sets
    assert three["isc_std"] == pytest.approx(pd.Series([2.0, 2.6, 2.3]).std(ddof=1))  # over sets, not splits
    assert three["degenerate"] == "all black; constant"
    assert one["sets"] == 1 and math.isnan(one["fid_std"]) and one["isc_std"] == 0.4  # one set: the split std
    assert one["degenerate"] == "" and one["precision"] == 0.5 and one["recall"] == 0.5


def test_write_tables_files_by_the_papers_numbers(tmp_path):
    """write_tables end to end on hand-made rows: names, the bold best, stars, LaTeX, the NFE and NLL tables."""
    from ied.tables import write_report, write_tables
    frame = metrics()
    sweep_rows = [{**row("ve", sample, 30, fid, n=40), "sampler_name": name, "steps": steps, "nfe": nfe}
                  for sample, name, steps, nfe, fid in (("g", "em-4", 4, 4, 90.0), ("g", "em", 8, 8, 30.0),
                                                        ("ve", "em-4", 4, 4, 80.0), ("ve", "em", 8, 8, 35.0),
                                                        ("g", "heun-2", 2, 3, 50.0), ("g", "heun-4", 4, 7, 25.0))]
    frame = pd.concat([frame, pd.DataFrame(sweep_rows)], ignore_index=True)
    frame["steps"], frame["nfe"] = frame["steps"].fillna(8).astype(int), frame["nfe"].fillna(8).astype(int)
    frame.to_parquet(tmp_path / "metrics.parquet")
    nll = tmp_path / "nll" / "ve" / "nll-30.parquet"
    nll.parent.mkdir(parents=True)
    pd.DataFrame({"image": [0, 1, 2, 3], "probe": 0, "bpd": [3.0, 3.2, 3.4, 3.4], "nfe": 50,
                  "checkpoint_step": 30}).to_parquet(nll)
    grid = {**GRID, "nll_steps": {"ve": [30], "l2": [30]},
            "sweep": {"train": ["ve"], "rationales": ["g", "ve"], "samplers": ["em", "heun"], "checkpoint": {"ve": 30},
                      "n_samples": 40, "points": {"em-4": {"sampler": "em", "steps": 4}, "em": {"sampler": "em", "steps": 8},
                                                  "heun-2": {"sampler": "heun", "steps": 2},
                                                  "heun-4": {"sampler": "heun", "steps": 4}}},
            "artefacts": {"tables": {"single": "table1", "repeated": "table3", "nfe": "fid_nfe", "nll": "nll"}}}
    write_tables(tmp_path / "metrics.parquet", grid, tmp_path / "tables", [nll])
    table1 = (tmp_path / "tables" / "table1.md").read_text()
    assert "| VE                    | **10.00** | 12.00     |" in table1 and "### Recall ↑ — sampler `em`" in table1
    assert r"\textbf{10.00}" in (tmp_path / "tables" / "table1.tex").read_text()
    assert (tmp_path / "tables" / "table3.md").read_text().splitlines() == [
        "## FID mean ± std over 2 sets of 100 samples at each cell's best checkpoint (up to step 20).", "",
        "### FID ↓ — sampler `em`", "",
        "| Training \\ Sampling   | VE               | N(0,5²)      | EDM (ρ=7)    |",
        "|:----------------------|:-----------------|:-------------|:-------------|",
        "| VE                    | **10.20** ± 0.28 | 12.20 ± 0.28 | 20.20 ± 0.28 |",
        "| L2                    | 11.20 ± 0.28     | 13.20 ± 0.28 | 21.20 ± 0.28 |", "",
        "### FID, the lowest of the 2 sets ↓ — sampler `em`", "",
        "| Training \\ Sampling   | VE        | N(0,5²)   | EDM (ρ=7)   |",
        "|:----------------------|:----------|:----------|:------------|",
        "| VE                    | **10.00** | 12.00     | 20.00       |",
        "| L2                    | 11.00     | 13.00     | 21.00       |", "",
        "`*`: mean ± std overlaps the best's (bold). The lowest of the sets is how EDM reports FID. `degenerate`: "
        "constant or all-alike samples, never ranked."]
    assert (tmp_path / "tables" / "table3.tex").read_text().splitlines()[:3] == [
        r"\begin{table}[t]", r"\centering", r"\caption{FID mean $\pm$ std over 2 sets of 100 samples at each "
        r"cell's best checkpoint (up to step 20). FID $\downarrow$, sampler em.}"]
    table3 = pd.read_parquet(tmp_path / "tables" / "table3.parquet")
    assert table3["fid_mean"].min() == pytest.approx(10.2) and set(table3["sample_rationale"]) == {"ve", "g", "e"}
    # the literature's layout: rows solver / schedule, columns NFE (heun's 3 and 7 beside em's 4 and 8), best in bold
    assert (tmp_path / "tables" / "fid_nfe.md").read_text().splitlines() == [
        "## FID against the number of denoiser evaluations (NFE) per image", "",
        "### trained with VE: FID (lowest of each NFE in bold)", "",
        "| solver / schedule   | NFE 3     | NFE 4     | NFE 7     | NFE 8     |",
        "|:--------------------|:----------|:----------|:----------|:----------|",
        "| em / N(0,5²)        |           | 90.00     |           | **30.00** |",
        "| em / VE             |           | **80.00** |           | 35.00     |",
        "| heun / N(0,5²)      | **50.00** |           | **25.00** |           |"]
    assert (tmp_path / "tables" / "fid_nfe.tex").read_text().splitlines() == [
        r"\begin{table}[t]", r"\centering",
        r"\caption{FID against NFE per image, trained with VE (lowest of each NFE in bold).}",
        r"\begin{tabular}{lcccc}", r"\toprule", r"Solver / schedule & NFE 3 & NFE 4 & NFE 7 & NFE 8 \\", r"\midrule",
        r"em / N(0,5$^2$) &  & 90.00 &  & \textbf{30.00} \\", r"em / VE &  & \textbf{80.00} &  & 35.00 \\",
        r"heun / N(0,5$^2$) & \textbf{50.00} &  & \textbf{25.00} &  \\", r"\bottomrule", r"\end{tabular}",
        r"\end{table}"]
    assert pd.read_parquet(tmp_path / "tables" / "fid_nfe.parquet")[["steps", "nfe", "fid"]].values.tolist() == [
        [4, 4, 90.0], [8, 8, 30.0], [4, 4, 80.0], [8, 8, 35.0], [2, 3, 50.0], [4, 7, 25.0]]
    nll_md = (tmp_path / "tables" / "nll.md").read_text()
    assert "| VE         | 20              | not computed           | 30          | 3.250 ± 0.096" in nll_md  # SE of 4
    assert (tmp_path / "tables" / "nll.tex").read_text().splitlines() == [
        r"\begin{table}[t]", r"\centering", r"\caption{NLL (bits/dim) per training rationale.}",
        r"\begin{tabular}{lcccc}", r"\toprule",
        r"Training & best-FID step & NLL there (bits/dim) & last step & NLL at the last step (bits/dim) \\",
        r"\midrule", r"VE & 20 & not computed & 30 & 3.250 $\pm$ 0.096 \\",
        r"L2 & 20 & not computed & 30 & not computed \\", r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    figure = tmp_path / "figures" / "fig1.png"
    figure.parent.mkdir()
    figure.write_bytes(b"png")
    write_report([str(tmp_path / "tables" / "table1.md")], [str(figure), str(figure.with_suffix(".pdf"))],
                 tmp_path / "report.md")
    report = (tmp_path / "report.md").read_text()
    assert report.splitlines()[:5] == ["# Inverse Engineering Diffusion — results", "", "## table1", "",
                                       "Best FID recorded during training (100 samples, one set per checkpoint), "
                                       "and IS, precision and recall at that checkpoint."]
    assert "\n## Figures\n" in report
    assert "![fig1](figures/fig1.png)" in report and "fig1.pdf" not in report and "**10.00**" in report


def test_latex_table_is_exactly_booktabs():
    """The whole LaTeX output of a 2 × 2 grid, character for character."""
    grid = pd.DataFrame([[Entry(10.0, bold=True), Entry(12.5, 0.25, star=True)],
                         [Entry(11.0, 0.5), Entry(math.nan, degenerate=True)]],
                        index=pd.Index(["VE", "N(0,5²)"], name="train_label"), columns=["L2", "EDM (ρ=7)"])
    assert to_latex(grid, "FID ↓, sampler em.") == "\n".join([
        r"\begin{table}[t]", r"\centering", r"\caption{FID $\downarrow$, sampler em.}", r"\begin{tabular}{lcc}",
        r"\toprule", r"Training $\backslash$ Sampling & L2 & EDM ($\rho$=7) \\", r"\midrule",
        r"VE & \textbf{10.00} & 12.50$^*$ $\pm$ 0.25 \\",
        r"N(0,5$^2$) & 11.00 $\pm$ 0.50 & \textit{degenerate} \\",
        r"\bottomrule", r"\end{tabular}", r"\end{table}", ""])
    from ied.tables import to_markdown
    assert to_markdown(grid).splitlines() == [
        "| Training \\ Sampling   | L2           | EDM (ρ=7)     |",
        "|:----------------------|:-------------|:--------------|",
        "| VE                    | **10.00**    | 12.50* ± 0.25 |",
        "| N(0,5²)               | 11.00 ± 0.50 | degenerate    |"]


def test_empty_protocols_and_unlabelled_names():
    from ied.tables import INTERVAL_COLUMNS, best_checkpoints, per_checkpoint
    empty = per_checkpoint(metrics().iloc[:0])
    assert empty.empty and list(empty.columns) == ["sampler_name", "train_rationale", "sample_rationale",
                                                   "checkpoint_step", "sets", "degenerate", "fid_mean", "fid_std",
                                                   "fid_min", "isc_mean", "isc_std", "kid_mean", "precision",
                                                   "recall", *INTERVAL_COLUMNS, "seeds", "fid_seeds"]
    assert best_checkpoints(empty).empty
    grid = {**GRID, "labels": {"ve": "VE"}}  # g has no label: its name is shown
    table = single_table(metrics(), grid)
    assert list(table.columns) == ["sampler_name", "train_rationale", "sample_rationale", "checkpoint_step", "fid",
                                   "isc_mean", "isc_std", "precision", "recall", "kid_mean", "fid_std_repeated",
                                   "isc_std_repeated", *INTERVAL_COLUMNS, "seeds", "fid_seeds", "degenerate",
                                   "train_label", "sample_label"]
    assert set(table["sample_label"]) == {"VE", "g"} and set(table["train_label"]) == {"VE", "l2"}


def test_star_rule_edge_cases():
    usable = pd.Series([True, True, True])
    # a best without a std counts as ± 0; the boundary |Δ| = std is inside
    stars, best = starred(pd.Series([10.0, 10.5, 12.0]), pd.Series([math.nan, 0.5, 0.5]), True, usable)
    assert best == 0 and stars.tolist() == [False, True, False]
    stars, best = starred(pd.Series([10.0, 11.0]), pd.Series([0.5, 0.5]), True, pd.Series([False, False]))
    assert best is None and stars.tolist() == [False, False] and list(stars.index) == [0, 1]


def test_single_table_stars_use_the_repeated_spread_and_keep_cells_without_it():
    frame = metrics()
    frame = frame[~((frame["sample_rationale"] == "g") & (frame["train_rationale"] == "l2") & (frame["seed_set"] == 1))]
    table = single_table(frame, GRID).set_index(["train_rationale", "sample_rationale"])
    assert len(table) == 4 and math.isnan(table.loc[("l2", "g"), "fid_std_repeated"])  # one set only: no spread
    entries = grids(single_table(frame, GRID), "fid", None, "fid_std_repeated", True)["em"]
    assert entries.loc["VE", "VE"].bold and math.isnan(entries.loc["VE", "VE"].std)  # one set: FID without ±
    # L2→VE: 11 vs the best 10, repeated stds 0.28 each: 1 > 0.57, no star; a spread of 0.6 would star it
    assert not entries.loc["L2", "VE"].star
    wide = frame.copy()
    wide.loc[wide["seed_set"] == 1, "fid"] += 0.8  # repeated stds ≈ 0.85: now within reach
    assert grids(single_table(wide, GRID), "fid", None, "fid_std_repeated", True)["em"].loc["L2", "VE"].star
    isc = grids(single_table(frame, GRID), "isc_mean", "isc_std", "isc_std_repeated", False)["em"]
    assert isc.loc["VE", "VE"].std == 0.1  # IS ± its split std


def test_sampler_grids_keep_the_config_order():
    frame = pd.concat([metrics(), metrics().assign(sampler_name="aaa")], ignore_index=True)
    grid = {**GRID, "samplers": ["em", "aaa"], "single": {**GRID["single"], "samplers": ["em", "aaa"]}}
    table = single_table(frame, grid)
    assert list(dict.fromkeys(table["sampler_name"])) == ["em", "aaa"]
    assert list(grids(table, "fid", None, None, True)) == ["em", "aaa"]


def test_nll_summary_reads_the_mean_and_standard_error(tmp_path):
    from ied.tables import nll_summary
    path = tmp_path / "nll" / "l2" / "nll-40.parquet"
    path.parent.mkdir(parents=True)
    pd.DataFrame({"image": [0, 0, 1, 1], "probe": [0, 1, 0, 1], "bpd": [2.0, 2.2, 2.4, 2.6], "nfe": [10, 12, 14, 16],
                  "checkpoint_step": 40}).to_parquet(path)
    summary = nll_summary([path]).iloc[0]
    assert summary["train_rationale"] == "l2" and summary["checkpoint_step"] == 40
    assert summary["bpd"] == pytest.approx(2.3)  # per-image means 2.1 and 2.5: their std / √2 images
    assert summary["bpd_se"] == pytest.approx(pd.Series([2.1, 2.5]).std(ddof=1) / math.sqrt(2))
    assert summary["nfe_per_image"] == 13 and summary["images"] == 2 and summary["probes"] == 2
    assert list(nll_summary([]).columns) == ["train_rationale", "checkpoint_step", "bpd", "bpd_se", "nfe_per_image",
                                             "images", "probes"]


def _section(markdown: str, title: str) -> list[str]:
    """The table rows under one '### title' heading of a Markdown table file."""
    lines = markdown.split(f"### {title}", 1)[1].split("###", 1)[0].splitlines()
    return [line for line in lines if line.startswith("| ") and not line.startswith("| Training")]


def test_table1_bolds_the_highest_is_precision_and_recall(tmp_path):
    """FID: lowest is best; IS, precision and recall: highest is best, each at the cell's best-FID checkpoint."""
    from ied.tables import write_tables
    frame = metrics()
    at_best = frame["checkpoint_step"] == 20
    for column, (train, sample), value in (("isc_mean", ("l2", "g"), 9.0), ("precision", ("ve", "g"), 0.9),
                                           ("recall", ("l2", "ve"), 0.8)):
        frame.loc[at_best & (frame["train_rationale"] == train) & (frame["sample_rationale"] == sample), column] = value
        frame.loc[~at_best, column] = 0.95 if column != "isc_mean" else 9.5  # never at a best-FID checkpoint
    frame["steps"], frame["nfe"] = 8, 8
    frame.to_parquet(tmp_path / "metrics.parquet")
    grid = {**GRID, "nll_steps": {}, "artefacts": {"tables": {"single": "table1", "repeated": "table3"}}}
    write_tables(tmp_path / "metrics.parquet", grid, tmp_path / "tables", [])
    md = (tmp_path / "tables" / "table1.md").read_text()
    for title, expected_row, bold in (("IS ↑", "| L2", "**9.00**"), ("Precision ↑", "| VE", "**0.90**"),
                                      ("Recall ↑", "| L2", "**0.80**")):
        rows = _section(md, title)
        assert [r.startswith(expected_row) for r in rows if "**" in r] == [True], (title, rows)
        assert bold in "".join(rows), (title, rows)
    assert "**10.00**" in _section(md, "FID ↓")[0]


def test_nll_table_takes_the_best_fid_of_its_own_usable_cells_of_the_first_sampler(tmp_path):
    from ied.tables import nll_summary, nll_table
    single = pd.DataFrame([  # train, sampler, step, FID, degenerate
        ("ve", "em", 10, 5.0, ""), ("ve", "em", 20, 1.0, "constant"), ("ve", "heun", 30, 0.5, ""),
        ("l2", "em", 30, 0.1, ""), ("ve", "em", 40, 3.0, "")],
        columns=["train_rationale", "sampler_name", "checkpoint_step", "fid", "degenerate"])
    paths = []
    for step, bpd in ((10, [3.0]), (40, [2.0, 2.5, 3.0])):  # one image: no standard error
        paths.append(tmp_path / "ve" / f"nll-{step}.parquet")
        paths[-1].parent.mkdir(exist_ok=True)
        pd.DataFrame({"image": range(len(bpd)), "probe": 0, "bpd": bpd, "nfe": 50,
                      "checkpoint_step": step}).to_parquet(paths[-1])
    summary = nll_summary(paths)
    assert math.isnan(summary.loc[0, "bpd_se"]) and summary.loc[1, "bpd_se"] == pytest.approx(0.5 / math.sqrt(3))
    grid = {"train": ["ve", "xyz"], "labels": {"ve": "VE"}, "single": {"samplers": ["em", "heun"]},
            "nll_steps": {"ve": [10, 40], "xyz": [10, 40]}}
    table = nll_table(summary, single, grid).set_index("train_rationale")
    assert table.loc["ve", "best_fid_step"] == 40 and table.loc["ve", "bpd_best_fid"] == pytest.approx(2.5)
    assert table.loc["xyz", "train_label"] == "xyz" and pd.isna(table.loc["xyz", "best_fid_step"])
    assert math.isnan(table.loc["xyz", "bpd_last"])


def test_nll_standard_error_is_over_images_with_probes_averaged_first(tmp_path):
    """Two probes of one image are not two independent images: the standard error is that of the per-image means."""
    from ied.tables import nll_summary
    bpd = {(0, 0): 3.0, (0, 1): 3.1, (1, 0): 4.0, (1, 1): 4.2, (2, 0): 2.0, (2, 1): 1.9}
    path = tmp_path / "ve" / "nll-10.parquet"
    path.parent.mkdir()
    pd.DataFrame([{"image": i, "probe": k, "bpd": b, "nfe": 50, "checkpoint_step": 10} for (i, k), b in bpd.items()]
                 ).to_parquet(path)
    means = [3.05, 4.1, 1.95]
    summary = nll_summary([path]).iloc[0]
    assert summary["bpd"] == pytest.approx(sum(means) / 3)
    assert summary["bpd_se"] == pytest.approx(pd.Series(means).std(ddof=1) / math.sqrt(3))
    assert summary["bpd_se"] > pd.Series(bpd.values()).std(ddof=1) / math.sqrt(6)  # what counting rows gave


def test_nll_table_without_a_usable_best_fid_cell_says_so(tmp_path):
    """Every single-set cell degenerate: no best-FID step, shown as such (no `nan`, no `900.0`)."""
    from ied.tables import _write_nll, nll_table
    single = pd.DataFrame([("ve", "em", 900, 5.0, "constant")],
                          columns=["train_rationale", "sampler_name", "checkpoint_step", "fid", "degenerate"])
    summary = pd.DataFrame({"train_rationale": ["ve"], "checkpoint_step": [900], "bpd": [3.2], "bpd_se": [0.1]})
    grid = {"train": ["ve"], "labels": {"ve": "VE"}, "single": {"samplers": ["em"]},
            "nll_steps": {"ve": [300, 600, 900]}}
    table = nll_table(summary, single, grid)
    _write_nll(tmp_path / "nll", table)
    text = (tmp_path / "nll.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| VE"))
    assert [c.strip() for c in row.split("|")[1:-1]] == ["VE", "—", "no usable cell", "900", "3.200 ± 0.100"]
    assert "nan" not in text and "900.0" not in text and "`no usable cell`: every single-set" in text
    assert "nan" not in (tmp_path / "nll.tex").read_text()
    assert pd.read_parquet(tmp_path / "nll.parquet")["best_fid_step"].isna().all()


def test_a_degenerate_checkpoint_is_never_the_best_even_with_the_lowest_fid():
    from ied.tables import best_checkpoints, per_checkpoint
    rows = pd.DataFrame([row("ve", "ve", 10, 1.0, degenerate="constant"), row("ve", "ve", 20, 9.0),
                         row("ve", "ve", 30, 7.0), row("l2", "ve", 10, 2.0, degenerate="all alike")])
    best = best_checkpoints(per_checkpoint(rows)).set_index("train_rationale")
    assert best.loc["ve", "checkpoint_step"] == 30 and best.loc["ve", "fid_mean"] == 7.0
    assert best.loc["l2", "degenerate"] == "all alike"  # nothing usable left: shown, flagged, never ranked
    table = single_table(pd.DataFrame([{**r, "sampler_name": "em"} for r in rows.to_dict("records")]), {
        **GRID, "single": {**GRID["single"], "steps": [10, 20, 30]}})
    assert table.set_index("train_rationale").loc["ve", "checkpoint_step"] == 30


def test_the_edm_protocol_takes_the_lowest_fid_of_the_sets_whichever_set_it_is():
    """EDM reports the lowest FID of its sets: here set 2, then set 1 — never simply set 0."""
    from ied.tables import CELL_KEYS, per_checkpoint
    base = {"sampler_name": "em", "train_rationale": "edm", "sample_rationale": "edm7", "checkpoint_step": 0,
            "degenerate": "", "isc_mean": 9.0, "isc_std": 0.1, "kid_mean": 0.01, "precision": 0.6, "recall": 0.5}
    assert set(CELL_KEYS) <= set(base)
    rows = pd.DataFrame([{**base, "seed_set": s, "fid": f} for s, f in enumerate([2.10, 2.04, 1.97])]
                        + [{**base, "sample_rationale": "ve", "seed_set": s, "fid": f}
                           for s, f in enumerate([3.3, 3.1, 3.2])])
    summary = per_checkpoint(rows).set_index("sample_rationale")
    assert summary.loc["edm7", "fid_min"] == 1.97 and summary.loc["ve", "fid_min"] == 3.1
    assert summary.loc["edm7", "fid_mean"] == pytest.approx((2.10 + 2.04 + 1.97) / 3)


def test_a_degenerate_sweep_point_is_never_the_bold_best_of_its_nfe():
    from ied.tables import nfe_grid
    frame = pd.DataFrame({"base_sampler": ["em", "em", "unipc"], "sample_label": ["VE", "L2", "VE"],
                          "nfe": [5, 5, 5], "fid": [3.0, 9.0, 4.0], "degenerate": ["constant", "", ""]})
    grid = nfe_grid(frame)
    assert [grid.loc[r, 5].bold for r in ("em / VE", "em / L2", "unipc / VE")] == [False, False, True]
    assert grid.loc["em / VE", 5].markdown() == "degenerate"


def test_a_rationale_s_seeds_are_one_cell_at_the_checkpoint_best_on_their_mean():
    """L2 trained with seeds 0 and 1 (models `l2`, `l2.seed1`): Table 1's cell is their mean at the checkpoint whose
    mean is least (step 20: 11.5, though seed 1 alone is best at step 30), ± their std, each seed's FID kept; a cell
    of several seeds is starred by the overlap of mean ± std."""
    rows = []
    for model, fids in (("l2", {10: 14.0, 20: 11.0, 30: 13.0}), ("l2.seed1", {10: 15.0, 20: 12.0, 30: 10.5}),
                        ("ve", {10: 30.0, 20: 12.2, 30: 31.0})):
        for step, fid in fids.items():
            rows.append({**row(model, "ve", step, fid), "fid_lo": fid - 5, "fid_hi": fid + 5})
    seeds = {"l2": ["l2", 0], "l2.seed1": ["l2", 1], "ve": ["ve", 0]}
    grid = {**GRID, "train": ["ve", "l2", "l2.seed1"], "seeds": seeds,
            "single": {**GRID["single"], "train": ["ve", "l2", "l2.seed1"], "rationales": ["ve"], "seeds": seeds},
            "repeated": {**GRID["repeated"], "train": [], "seeds": {}}}
    table = single_table(pd.DataFrame(rows), grid).set_index("train_rationale")
    assert list(table.index) == ["ve", "l2"] and table.loc["l2", "checkpoint_step"] == 20
    assert table.loc["l2", "fid"] == pytest.approx(11.5) and table.loc["l2", "seeds"] == 2
    assert list(table.loc["l2", "fid_seeds"]) == [11.0, 12.0]
    std = pd.Series([11.0, 12.0]).std()
    assert (table.loc["l2", "fid_lo"], table.loc["l2", "fid_hi"]) == pytest.approx((11.5 - std, 11.5 + std))
    assert (table.loc["ve", "fid_lo"], table.loc["ve", "fid_hi"]) == pytest.approx((7.2, 17.2))  # one seed: its interval
    entries = grids(single_table(pd.DataFrame(rows), grid), "fid", None, None, True, "fid")["em"]
    assert entries.loc["L2", "VE"].bold and entries.loc["VE", "VE"].star  # 12.2 ± 5 overlaps 11.5 ± 0.71
