"""Every malformed config fails before any job, with one message naming the key, no traceback and no output."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ied.checks import load, validate, workflow_rules
from ied.config import ConfigError, merge

from conftest import DEFAULT, REPO, VENV_ENV

CORPUS = sorted((REPO / "tests" / "configs" / "bad").glob("*.yaml"))

def expected_key(path: Path) -> str:
    return path.read_text().splitlines()[0].removeprefix("# expect: ").strip()


def is_raw(path: Path) -> bool:
    """A raw case is a second config file as written (a duplicate key cannot survive being parsed and merged)."""
    return path.read_text().splitlines()[1].startswith("# raw:")


def materialize(path: Path) -> dict:
    """The default config with the case's patch merged in and its `_delete` keys removed."""
    patch = yaml.safe_load(path.read_text())
    deletes = patch.pop("_delete", [])
    config = merge(yaml.safe_load(DEFAULT.read_text()), patch)
    for dotted in deletes:
        *parents, last = dotted.split(".")
        node = config
        for key in parents:
            node = node[key]
        del node[last]
    return config


@pytest.fixture(scope="module")
def case_files(tmp_path_factory) -> Path:
    """The folder the cases run in: files/ holds the network, statistics and throughput files they name."""
    from bad_files import write_all
    return write_all(tmp_path_factory.mktemp("bad-files"))


def test_the_rules_read_from_the_workflow_are_snakemakes():
    """The allowed keys of `resources:` are the rules Snakemake itself lists, but for train_adaptive_segment, which
    is train_segment (`use rule`) with its resources."""
    from conftest import snakemake
    listed = [line.split()[0] for line in snakemake("--list-rules", cwd=REPO).stdout.splitlines() if line.strip()]
    assert "train_adaptive_segment" in listed
    listed.remove("train_adaptive_segment")
    assert workflow_rules() == sorted(listed) and {"train_segment", "generate", "evaluate", "tables"} <= set(listed)


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_rejected_with_the_key_named(path, case_files, monkeypatch):
    monkeypatch.chdir(case_files)
    with pytest.raises(ConfigError) as info:
        if is_raw(path):
            load([DEFAULT, path])
        else:
            validate(materialize(path))
    assert f"config key '{expected_key(path)}" in str(info.value)
    assert "\n" not in str(info.value)
    assert not (case_files / "pwned").exists()


def snakemake_rejects(path: Path, workdir: Path, files: Path) -> str | None:
    """Run snakemake on one malformed config in its own folder; None if it stops as it must, else why not."""
    workdir.mkdir()
    (workdir / "files").symlink_to(files / "files")
    if is_raw(path):
        configfiles = [str(DEFAULT), str(path)]
    else:
        configfiles = [str(workdir / "config.yaml")]
        Path(configfiles[0]).write_text(yaml.safe_dump(materialize(path), allow_unicode=True))
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
                             "--cores", "1", "--configfile", *configfiles],
                            capture_output=True, text=True, env=VENV_ENV, cwd=workdir, timeout=300)
    messages = [line for line in result.stderr.splitlines() if line.startswith("Config error:")]
    if result.returncode == 0:
        return "exit status 0"
    if not (len(messages) == 1 and f"config key '{expected_key(path)}" in messages[0]):
        return f"no single message naming {expected_key(path)}: {result.stderr[-500:]}"
    if "Traceback" in result.stderr:
        return "a traceback"
    if (workdir / "results").exists() or (files / "pwned").exists():
        return "wrote results/"
    return None


@pytest.mark.slow
def test_snakemake_stops_before_any_job(tmp_path, case_files):
    """Every case through snakemake (two at a time): non-zero exit, one line naming the key, no traceback, no
    results/."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=2) as pool:
        problems = dict(zip((p.stem for p in CORPUS),
                            pool.map(lambda p: snakemake_rejects(p, tmp_path / p.stem, case_files), CORPUS)))
    assert {case: why for case, why in problems.items() if why} == {}
