"""ied.layout: the names of the cells, which must follow only what determines their output."""
import json

import numpy as np

from ied import layout
from ied.checks import load, validate
from ied.config import merge
from ied.data import ImageSet, save_imageset

from conftest import DEFAULT


def config(**patch):
    return validate(merge(load([DEFAULT]), patch), deep=False)


def sweep_cells(cfg):
    return {c for c in layout.sweep_cells(cfg)}


def test_a_sweep_point_s_path_does_not_follow_the_sampler_s_configured_steps(tmp_path, monkeypatch):
    """dpmpp_2m at NFE 10 is `dpmpp_2m-10` whatever `sample.samplers.dpmpp_2m.steps` says: editing it renames no
    cell (it once renamed the NFE-10 cells, which then reran with the same output)."""
    monkeypatch.chdir(tmp_path)
    before = config()
    after = config(sample={"samplers": {"dpmpp_2m": {"steps": 20}, "ipndm": {"steps": 5}}})
    assert sweep_cells(before) == sweep_cells(after)
    assert layout.point_names(before)["dpmpp_2m", 10] == "dpmpp_2m-10"
    assert layout.sweep(before)["points"] == layout.sweep(after)["points"]


def test_a_point_that_is_a_protocol_s_cell_is_generated_once(tmp_path, monkeypatch):
    """The sweep's Heun at its configured steps with a protocol's rationale is that protocol's cell (one job)."""
    monkeypatch.chdir(tmp_path)
    cfg = config(sample={"samplers": {"heun": {"steps": 5}},
                         "single": {"samplers": ["em", "heun"]}}, nfe_sweep={"train_rationales": ["l2"]})
    assert layout.point_names(cfg)["heun", 5] == "heun"
    protocol = {c for c in layout.protocol_cells(cfg, "single") if c.sampler == "heun"}
    assert protocol & sweep_cells(cfg)
    paths = [layout.cell_path(layout.SAMPLES, c) for c in layout.cells(cfg)]
    assert len(paths) == len(set(paths))


def write_legacy_set(root, sampler, steps, algorithm=None):
    """A samples file as a run before `<sampler>-<steps>` names wrote it, at the sampler's own name."""
    path = root / "results" / "digits-default" / "samples" / "l2" / "900" / "edm7" / sampler / "n360-seed0.npz"
    path.parent.mkdir(parents=True)
    info = {"sampler": algorithm or sampler, "steps": steps}
    save_imageset(path, ImageSet(np.zeros((2, 1, 8, 8), np.uint8), np.zeros(2, np.int64), 10),
                  generation=json.dumps(info))


def test_a_finished_run_keeps_the_names_it_wrote(tmp_path, monkeypatch):
    """Sets a run wrote under the sampler's own name keep it for the steps they were made with, even after an edit
    of the configured steps; a name whose sets disagree, or were made by another algorithm, is not kept."""
    monkeypatch.chdir(tmp_path)
    write_legacy_set(tmp_path, "dpmpp_2m", 10)
    for steps in (10, 20):
        names = layout.point_names(config(sample={"samplers": {"dpmpp_2m": {"steps": steps}}}))
        assert names["dpmpp_2m", 10] == "dpmpp_2m" and names["dpmpp_2m", 20] == "dpmpp_2m-20"
    write_legacy_set(tmp_path, "ipndm", 10, algorithm="unipc")
    assert layout.point_names(config())["ipndm", 10] == "ipndm-10"
