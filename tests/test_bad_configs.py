"""Issue 7: every malformed config fails before any job, with one message naming the key, and no output."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ied.config import merge, validate
from ied.pipeline import ConfigError

from conftest import REPO, VENV_ENV

CORPUS = sorted((REPO / "tests" / "configs" / "bad").glob("*.yaml"))


def materialize(path: Path) -> tuple[dict, str]:
    """The default config with the case's patch merged in and its `_delete` keys removed."""
    expect = path.read_text().splitlines()[0].removeprefix("# expect: ").strip()
    patch = yaml.safe_load(path.read_text())
    deletes = patch.pop("_delete", [])
    config = merge(yaml.safe_load((REPO / "config" / "config.yaml").read_text()), patch)
    for dotted in deletes:
        *parents, last = dotted.split(".")
        node = config
        for key in parents:
            node = node[key]
        del node[last]
    return config, expect


def test_corpus_size():
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_rejected_with_the_key_named(path):
    config, expect = materialize(path)
    with pytest.raises(ConfigError) as info:
        validate(config)
    assert f"config key '{expect}" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_snakemake_stops_before_any_job(path, tmp_path):
    config, expect = materialize(path)
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config, allow_unicode=True))
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                             "--cores", "1", "--configfile", str(configfile)],
                            capture_output=True, text=True, env=VENV_ENV, cwd=tmp_path, timeout=300)
    assert result.returncode != 0
    messages = [line for line in result.stderr.splitlines() if line.startswith("Config error:")]
    assert len(messages) == 1 and f"config key '{expect}" in messages[0], result.stderr[-2000:]
    assert not (tmp_path / "results").exists() and not (tmp_path / "pwned").exists()
