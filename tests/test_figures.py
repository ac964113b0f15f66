"""figures.py beyond the shared end-to-end run: the published rows beside a pretrained model's FID-vs-NFE lines, the
fitted rationales in Figs. 1 and 2."""
import pandas as pd
import yaml

from ied import layout
from ied.checks import load

from conftest import DEFAULT


def test_the_published_rows_of_a_pretrained_network_are_found_by_its_file_name_and_drawn(tmp_path, monkeypatch):
    """`published_results` rows reach the figure under the model that names that network file, and the fid_nfe
    figure draws them (their label in the legend) beside the model's lines."""
    from unittest import mock

    from ied import figures
    from test_config import write_stand_in_network

    monkeypatch.chdir(tmp_path)
    (tmp_path / "nets").mkdir()
    write_stand_in_network(tmp_path / "nets" / "edm-cifar10-32x32-cond-vp.pkl", img_channels=1, img_resolution=8,
                           label_dim=10)
    (tmp_path / "published.yaml").write_text(yaml.safe_dump({"edm-cifar10-32x32-cond-vp.pkl": [
        {"solver": "heun", "schedule": "EDM (ρ=7)", "nfe": 35, "fid": 1.79, "source": "a paper, Table 2"}]}))
    (tmp_path / "local.yaml").write_text(yaml.safe_dump({
        "pretrained": {"edm": {"format": "edm", "path": "nets/edm-cifar10-32x32-cond-vp.pkl"}},
        "nfe_sweep": {"train_rationales": ["edm"], "rationales": ["edm7"], "samplers": ["heun"],
                      "nfe": [5, 9], "n_samples": 360},
        "published_results": "published.yaml"}))
    config = load([DEFAULT, tmp_path / "local.yaml"])
    experiment = layout.figure_inputs(config)
    assert experiment["published"] == {"edm": [{"solver": "heun", "schedule": "EDM (ρ=7)", "nfe": 35, "fid": 1.79,
                                                "source": "a paper, Table 2"}]}
    metrics = pd.DataFrame([{"train_rationale": "edm", "sample_rationale": "edm7", "sampler_name": name,
                             "checkpoint_step": layout.PRETRAINED_STEP, "n_samples": 360, "seed_set": 0,
                             "steps": steps, "nfe": 2 * steps - 1, "fid": fid, "isc_mean": 1.0, "precision": 0.5,
                             "recall": 0.5, "degenerate": ""}
                            for name, steps, fid in (("heun-3", 3, 30.0), ("heun-5", 5, 9.0))])
    with mock.patch.object(figures.plt.Axes, "plot", autospec=True, side_effect=figures.plt.Axes.plot) as plot:
        figures.fig_fid_nfe(metrics, experiment, tmp_path, "fid_nfe")
    labels = [call.kwargs.get("label") for call in plot.call_args_list]
    assert "published: EDM (ρ=7) (a paper)" in labels and "EDM (ρ=7)" in labels
    published = next(call for call in plot.call_args_list if call.kwargs.get("label", "").startswith("published"))
    assert list(published.args[1:3]) == [[35], [1.79]]  # in the Heun panel, at its NFE
    assert (tmp_path / "fid_nfe.png").stat().st_size > 1000


def test_the_fid_nfe_figure_has_a_panel_per_solver_a_colour_per_schedule_and_the_distance_below(tmp_path,
                                                                                                  monkeypatch):
    """A column per solver, each schedule one colour in all of them (fitted ones dashed), intervals as bands, and a
    second row of panels for the distance from the flow; one legend outside the axes."""
    from unittest import mock

    from ied import figures
    monkeypatch.chdir(tmp_path)  # no finished run whose cells keep their names
    config = load([DEFAULT])
    experiment = layout.figure_inputs(config)
    rows = []
    for name, point in experiment["sweep"]["points"].items():
        for sample in ("edm7", "ve", "fit-density"):
            fid = 10.0 + point["steps"] + len(sample)
            rows.append({"train_rationale": "l2", "sample_rationale": sample, "sampler_name": name, "checkpoint_step": 900,
                         "n_samples": 360, "seed_set": 0, "steps": point["steps"], "nfe": point["steps"], "fid": fid,
                         "fid_lo": fid - 1, "fid_hi": fid + 1, "isc_mean": 1.0, "precision": 0.5, "recall": 0.5,
                         "ref_rmse": 0.1, "ref_rmse_lo": 0.09, "ref_rmse_hi": 0.11, "degenerate": ""})
    metrics = pd.DataFrame(rows)
    with mock.patch.object(figures.plt.Axes, "plot", autospec=True, side_effect=figures.plt.Axes.plot) as plot, \
            mock.patch.object(figures.plt.Axes, "fill_between", autospec=True,
                              side_effect=figures.plt.Axes.fill_between) as bands:
        figures.fig_fid_nfe(metrics, experiment, tmp_path, "fid_nfe")
    axes = {id(call.args[0]) for call in plot.call_args_list}
    assert len(axes) == 2 * len(experiment["sweep"]["samplers"])  # FID and distance, per solver
    colours = {}
    for call in plot.call_args_list:
        colours.setdefault(call.kwargs["label"], set()).add(call.kwargs["color"])
        assert (call.args[3] == "--") == (call.kwargs["label"] == "fitted (cost density)")
    assert all(len(c) == 1 for c in colours.values()) and len(colours) == 3
    assert len(bands.call_args_list) == len(plot.call_args_list)


def test_figure_1_draws_the_fitted_rationales_dashed_beside_the_hand_made_ones(tmp_path):
    """Every configured rationale's table is drawn in Fig. 1 (the fitted ones dashed); Fig. 2 shows the hand-made."""
    from unittest import mock

    import numpy as np

    from ied import figures
    config = load([DEFAULT])
    experiment = layout.figure_inputs(config)
    assert experiment["fitted"] == ["fit-dpm-5", "fit-dpm-10", "fit-heun-5", "fit-heun-9", "dp-dpm-10", "fit-density"]
    t = np.linspace(0, 1, 11)
    schedules = {name: pd.DataFrame({"t": t, "sigma": 0.002 * 40000**t, "pdf": np.ones(11), "cdf": t})
                 for name in experiment["schedules"]}
    with mock.patch.object(figures.plt.Axes, "plot", autospec=True, side_effect=figures.plt.Axes.plot) as plot:
        figures.fig_rationales(schedules, experiment, tmp_path, "fig1")
    styles = {call.kwargs["label"]: call.kwargs["linestyle"] for call in plot.call_args_list}
    labels = experiment["labels"]
    assert {styles[labels[n]] for n in experiment["fitted"]} == {"--"}
    assert {styles[labels[n]] for n in experiment["schedules"] if n not in experiment["fitted"]} == {"-"}
    with mock.patch.object(figures.plt.Axes, "set", autospec=True, side_effect=figures.plt.Axes.set) as titled:
        figures.fig_marginals(schedules, experiment, tmp_path, "fig2")
    titles = [call.kwargs.get("title") for call in titled.call_args_list]
    assert labels["l2"] in titles and not any(labels[n] in titles for n in experiment["fitted"])


def test_the_adaptive_figure_draws_each_segment_s_learned_density_beside_its_target_and_the_fixed_ones(tmp_path):
    """One column per adaptive model: its learned σ·p(σ) per segment (from the density tables), the target dashed,
    the fixed training rationales; below, the loss EMA per bin."""
    from unittest import mock

    import numpy as np

    from ied import figures
    from ied.adaptive import AdaptiveSchedule, write_density
    from ied.specs import configured_rationales
    config = load([DEFAULT])
    experiment = layout.figure_inputs(config)
    assert experiment["adaptive"] == {"adaptive-l2": "l2"} and "figures/adaptive_density.png" in layout.figures(config)
    assert "adaptive-l2" not in experiment["schedules"]  # its density moves: no schedule table
    schedule = AdaptiveSchedule(configured_rationales(config)["adaptive-l2"])
    paths = []
    for step in (300, 600):
        mid = np.sqrt(schedule.edges[:-1] * schedule.edges[1:])
        schedule.update(mid ** (step / 600), np.ones(len(mid)), step)
        paths.append(tmp_path / "densities" / "adaptive-l2" / f"density-{step}.parquet")
        paths[-1].parent.mkdir(parents=True, exist_ok=True)
        write_density(paths[-1], schedule, step)
    densities = figures.read_densities([str(p) for p in paths])
    t = np.linspace(0, 1, 11)
    schedules = {name: pd.DataFrame({"t": t, "sigma": 0.002 * 40000**t, "pdf": np.ones(11), "cdf": t})
                 for name in experiment["schedules"]}
    with mock.patch.object(figures.plt.Axes, "plot", autospec=True, side_effect=figures.plt.Axes.plot) as plot:
        figures.fig_adaptive_density(densities, schedules, experiment, tmp_path, "adaptive_density")
    labels = [call.kwargs.get("label") for call in plot.call_args_list]
    assert "target: L2" in labels and {"VE", "L2", "N(0,5²)"} <= set(labels)
    with mock.patch.object(figures.plt.Axes, "stairs", autospec=True, side_effect=figures.plt.Axes.stairs) as stairs:
        figures.fig_adaptive_density(densities, schedules, experiment, tmp_path, "adaptive_density")
    steps = {call.kwargs.get("label"): call for call in stairs.call_args_list}
    assert {"step 300", "step 600", "target, per bin"} <= set(steps)
    values, edges = steps["step 600"].args[1], steps["step 600"].args[2]  # per bin: π_b over its width in log σ
    np.testing.assert_allclose(values, schedule.rationale().probabilities / np.diff(np.log(schedule.edges)))
    np.testing.assert_allclose(edges, schedule.edges)
    assert (tmp_path / "adaptive_density.png").stat().st_size > 1000
