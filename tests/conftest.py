import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

# one thread per pytest-xdist worker (`make test` runs two), up to two otherwise
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, torch.get_num_threads())))

TINY_NET = {"base_channels": 16, "channel_mult": [1, 2], "num_blocks": 1, "dropout": 0.1, "attention": True,
            "sigma_data": 0.5}
L2 = {"family": "l2", "sigma_min": 0.002, "sigma_max": 80.0, "v_max": 1.0}
VE = {"family": "ve", "sigma_min": 0.002, "sigma_max": 80.0}


# The finished runs the tests share (session fixtures below), by the files whose tests use them. Under pytest-xdist
# (`make test`: -n 2) each file listed goes to one worker as a whole, so each run is made once; every other test is
# scheduled on its own. (xdist's --dist loadgroup would group by marker, but its nodeid suffix does not reach
# pytest ≥ 9.)
SHARED_RUN_FILES = {"test_pipeline.py": "e2e_run", "test_cost.py": "e2e_run", "test_faults.py": "small_reference",
                    "test_slurm.py": "small_reference"}


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class SharedRunScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return SHARED_RUN_FILES.get(Path(nodeid.split("::")[0]).name, nodeid)

    return SharedRunScheduling(config, log)


def pytest_collection_modifyitems(items):
    """Slow tests first (a stable sort): the workers take the long ones while there is other work to balance them,
    rather than one worker running the last long test alone. A test that uses a shared run from a file not listed
    for it would make the run a second time: refused."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    for item in items:
        for run in set(SHARED_RUN_FILES.values()) & set(getattr(item, "fixturenames", ())):
            if SHARED_RUN_FILES.get(item.path.name) != run:
                raise pytest.UsageError(f"{item.nodeid} uses {run}: list {item.path.name} for it in "
                                        f"SHARED_RUN_FILES (tests/conftest.py)")


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """Prepared digits train/test splits."""
    from ied.data import prepare
    root = tmp_path_factory.mktemp("digits")
    prepare("digits", "train", root / "train.npz")
    prepare("digits", "test", root / "test.npz")
    return root


def tiny_spec(**overrides):
    """A resolved training spec (ied.specs.training_spec) of a tiny digits model."""
    spec = {"dataset": "digits", "rationale": dict(L2), "network": dict(TINY_NET), "batch_size": 32, "lr": 2e-3,
            "ema": 0.99, "grad_clip": None, "seed": 0, "weighting": None}
    spec.update(overrides)
    return spec


def sampling_spec(rationale=VE, sampler="euler_maruyama", steps=6, **options):
    """A resolved sampling spec (ied.specs.sampling_spec)."""
    from ied.samplers import resolve_options
    return {"rationale": dict(rationale), "sampler": sampler, "steps": steps,
            "options": resolve_options(sampler, options)}


REPO = Path(__file__).resolve().parents[1]
# Rules call `python -m ied` through PATH (conda envs on clusters): put this interpreter's bin/ first.
VENV_ENV = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}


SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
DEFAULT = REPO / "config" / "config.yaml"
# the reduced default, plus a tiny published-format EDM network that e2e_run writes into its working directory
E2E = ["--configfile", str(DEFAULT), str(REPO / "tests" / "configs" / "e2e.yaml"), "pretrained.yaml"]
TINY_EDM = dict(img_resolution=8, img_channels=1, label_dim=10, model_type="SongUNet", embedding_type="positional",
                encoder_type="standard", decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1],
                model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0, augment_dim=9)


def write_tiny_edm(workdir: Path) -> None:
    """An EDM network pickle of a tiny 8×8 EDMPrecond(SongUNet) (tests/edm_pickle.py) and the config entry naming it."""
    import edm_pickle
    from ied.networks import EDMPrecond
    torch.manual_seed(0)
    net = EDMPrecond(**TINY_EDM)
    edm_pickle.write(workdir / "edm-tiny.pkl", net.eval(), TINY_EDM)
    # the e2e config's repeated protocol names its trained models; the pretrained one joins them
    (workdir / "pretrained.yaml").write_text(yaml.safe_dump({
        "pretrained": {"edm-tiny": {"format": "edm", "path": "edm-tiny.pkl", "label": "EDM tiny"}},
        "sample": {"repeated": {"train_rationales": ["ve", "l2", "edm-tiny"]}}}))


def snakemake(*args, cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run snakemake on this repository's Snakefile in `cwd` (its working directory)."""
    result = subprocess.run([*SNAKEMAKE, "-d", str(cwd), *map(str, args)], capture_output=True, text=True,
                            env=env or VENV_ENV, cwd=cwd, timeout=3600)
    if check and result.returncode != 0:
        raise AssertionError(result.stdout[-3000:] + result.stderr[-3000:])
    return result


@pytest.fixture(scope="session")
def e2e_run(tmp_path_factory) -> Path:
    """The reduced embedded default (tests/configs/e2e.yaml), run once for every test that needs a finished
    pipeline; returns the working directory (results under results/e2e/)."""
    workdir = tmp_path_factory.mktemp("e2e")
    write_tiny_edm(workdir)
    snakemake("--cores", "2", *E2E, cwd=workdir)
    return workdir


def without_fitted(config: dict) -> dict:
    """A config (a raw dict) with hand-made rationales only: without its fitted rationales, its adaptive training
    rationales and what samples their densities, and without the protocols' model lists, for tests that replace
    the models."""
    made = {name for name, entry in config["rationales"].items()
            if entry.get("family") in ("fitted", "adaptive", "learned")}
    config["rationales"] = {k: v for k, v in config["rationales"].items() if k not in made}
    config["train"]["rationales"] = [n for n in config["train"]["rationales"] if n not in made]
    if config.get("nfe_sweep", {}).get("rationales"):
        config["nfe_sweep"]["rationales"] = [n for n in config["nfe_sweep"]["rationales"] if n not in made]
    for protocol in ("single", "repeated"):
        config["sample"][protocol].pop("train_rationales", None)
    return config


def hand_made_default(tmp_path: Path) -> Path:
    """config/config.yaml with hand-made rationales only (without_fitted), written to tmp_path."""
    path = tmp_path / "hand-made.yaml"
    path.write_text(yaml.safe_dump(without_fitted(yaml.safe_load(DEFAULT.read_text())), allow_unicode=True))
    return path


def small_pipeline_config(tmp_path: Path, experiment: str = "small") -> Path:
    """The embedded default cut to one rationale, two 30-step segments and 40 samples; returns its path."""
    from ied.config import merge

    config = merge(yaml.safe_load((REPO / "config" / "config.yaml").read_text()), {
        "experiment": experiment,
        "train": {"rationales": ["l2"], "total_steps": 60, "checkpoint_every": 30, "batch_size": 32, "log_every": 5},
        "sample": {"single": {"rationales": ["l2"], "n_samples": 40},
                   "repeated": {"rationales": ["l2"], "n_samples": 40, "sets": 1},
                   "batch_size": 10, "shard_size": 10},
        "nfe_sweep": {"steps": [], "nfe": []}, "ablation": {"sigma_n": []}})
    config["sample"]["samplers"] = {"em": {"sampler": "euler_maruyama", "steps": 40}}
    without_fitted(config)
    path = tmp_path / f"{experiment}.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


@pytest.fixture(scope="session")
def small_reference(tmp_path_factory) -> Path:
    """small_pipeline_config run once, uninterrupted and locally: what the fault and SLURM runs must equal."""
    workdir = tmp_path_factory.mktemp("reference")
    snakemake("--cores", "1", "--configfile", small_pipeline_config(workdir), cwd=workdir)
    return workdir / "results" / "small"


def assert_same_results(expected: Path, actual: Path) -> None:
    """Two results/<experiment> folders of small_pipeline_config hold bit-identical weights, samples and metrics."""
    import numpy as np
    import pandas as pd

    for step in (30, 60):
        a, b = (torch.load(d / "checkpoints" / "l2" / f"ckpt-{step}.pt", weights_only=True) for d in (expected, actual))
        for key in ("net", "ema"):
            assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), (step, key)
    samples = sorted(expected.glob("samples/**/*.npz"))
    assert samples
    for path in samples:
        with np.load(path) as x, np.load(actual / path.relative_to(expected)) as y:
            assert np.array_equal(x["images"], y["images"]), path
    cols = ["train_rationale", "sample_rationale", "checkpoint_step", "fid", "isc_mean", "isc_std", "kid_mean",
            "kid_std"]
    a, b = (pd.read_parquet(d / "metrics.parquet")[cols] for d in (expected, actual))
    pd.testing.assert_frame_equal(a, b)
    assert not list(actual.glob("samples/**/*.parts"))


def job_pids(workdir: Path, subcommand: str) -> list[int]:
    """Processes running `python -m ied <subcommand>` inside workdir."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if b"ied" in argv and subcommand.encode() in argv and Path(os.readlink(entry / "cwd")) == workdir:
                pids.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return pids


@pytest.fixture(scope="session")
def inception(tmp_path_factory) -> Path:
    """torch-fidelity's Inception-v3 with random weights (He-initialised convolutions, so features are O(1))."""
    from unittest import mock

    import torch
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    path = tmp_path_factory.mktemp("inception") / "weights-inception-random.pth"
    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: None), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None):
        torch.manual_seed(0)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(net.state_dict(), path)
    return path
