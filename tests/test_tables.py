"""ied.tables on small hand-made metrics with known answers: best checkpoint, the '*' rule, protocols, LaTeX."""
import math

import pandas as pd
import pytest

from ied.data import DATASETS
from ied.tables import Entry, grids, latex_escape, repeated_table, single_table, starred, to_latex

GRID = {"train": ["ve", "l2"], "samplers": ["em"], "labels": {"ve": "VE", "l2": "L2", "g": "N(0,5²)", "e": "EDM (ρ=7)"},
        "single": {"rationales": ["ve", "g"], "samplers": ["em"], "n_samples": 100, "sets": 1, "steps": [10, 20, 30]},
        "repeated": {"rationales": ["ve", "g", "e"], "samplers": ["em"], "n_samples": 100, "sets": 2,
                     "steps": [10, 20]}}


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
    assert latex_escape("EDM (ρ=7)") == r"EDM ($\rho$=7)" and latex_escape("N(0,5²)") == r"N(0,5$^2$)"
    assert latex_escape("a_b & 50%") == r"a\_b \& 50\%"
    with pytest.raises(ValueError, match="no LaTeX form"):
        latex_escape("naïve")
    tex = to_latex(grids(single_table(metrics(), GRID), "fid", None, "fid_std_repeated", True)["em"], "FID ↓")
    assert tex.isascii() and r"\textbf{10.00}" in tex and "**" not in tex and r"$^*$$^*$" not in tex


def test_reference_split_is_test_for_cifar10_and_digits_val_for_imagenet32():
    assert {name: d.reference_split for name, d in DATASETS.items()} == {"digits": "test", "cifar10": "test",
                                                                           "imagenet32": "val"}


def test_nll_table_at_the_best_fid_and_last_checkpoints(tmp_path):
    from ied.tables import _write_nll, nll_table
    summary = pd.DataFrame({"train_rationale": ["ve", "ve", "ve", "l2"], "checkpoint_step": [10, 20, 30, 30],
                            "bpd": [4.0, 3.5, 3.6, 3.2], "bpd_se": [0.1, 0.1, 0.1, 0.1]})
    grid = {**GRID, "nll_steps": [10, 20, 30]}
    table = nll_table(summary, single_table(metrics(), grid), grid).set_index("train_rationale")
    assert table.loc["ve", "best_fid_step"] == 20 and table.loc["ve", "bpd_best_fid"] == 3.5  # FID is lowest at 20
    assert table.loc["ve", "last_step"] == 30 and table.loc["ve", "bpd_last"] == 3.6
    assert math.isnan(table.loc["l2", "bpd_best_fid"]) and table.loc["l2", "bpd_last"] == 3.2  # 20 not computed
    _write_nll(tmp_path / "nll", table.reset_index())
    text = (tmp_path / "nll.md").read_text()
    assert "| VE         |              20 | 3.500 ± 0.100" in text and "not computed" in text
