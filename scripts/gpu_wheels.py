"""Wheels of the Python packages a GPU machine without a package index lacks, for scripts/gpu-check.

Run here, where PyPI is reachable: `python scripts/gpu_wheels.py` writes .gpu-wheels/ (git-ignored; carry it to
the GPU machine). It walks the installed dependency closure of what the pipeline needs beyond the GPU image's own
packages (/work/.library/device/KINDS.md lists them: torch, numpy, scipy, pandas, pyarrow, matplotlib, …), builds
pure-Python wheels from the versions installed here and downloads compiled ones for the image's CPython 3.12.
"""
from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOTS = ["snakemake", "snakemake-executor-plugin-slurm", "jsonschema", "torch-fidelity", "pytest-xdist"]
ON_THE_IMAGE = {  # present on the GPU image, never carried (their dependencies are there too)
    "torch", "torchvision", "numpy", "scipy", "pandas", "pyarrow", "pyyaml", "matplotlib", "seaborn", "pillow",
    "scikit-learn", "tqdm", "tabulate", "jinja2", "markupsafe", "packaging", "requests", "urllib3", "idna", "certifi",
    "charset-normalizer", "psutil", "typing-extensions", "attrs", "platformdirs", "filelock", "fsspec", "sympy",
    "mpmath", "networkx", "pytest", "wrapt", "six", "python-dateutil", "pluggy", "iniconfig", "pygments"}
OUT = Path(__file__).resolve().parents[1] / ".gpu-wheels"


def _needed(requirement: str) -> str | None:
    """The distribution a requirement names, if the GPU image's CPython 3.12 on Linux needs it (no extras)."""
    from packaging.requirements import Requirement

    req = Requirement(requirement)
    env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
           "platform_system": "Linux", "os_name": "posix", "platform_machine": "x86_64", "extra": ""}
    if req.marker is not None and not req.marker.evaluate(env):
        return None
    return re.sub(r"[-_.]+", "-", req.name).lower()


def closure() -> dict[str, str]:
    """name → installed version of every distribution the roots need, the image's own excluded."""
    seen: dict[str, str] = {}
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in seen or name in ON_THE_IMAGE:
            continue
        dist = metadata.distribution(name)
        seen[name] = dist.version
        if name == "torch-fidelity":
            continue  # its dependencies (torch, torchvision, numpy, scipy, pillow, tqdm) are on the image
        todo += [n for n in map(_needed, dist.requires or []) if n]
    return seen


def main() -> int:
    OUT.mkdir(exist_ok=True)
    pip = [sys.executable, "-m", "pip", "-q"]
    for name, version in sorted(closure().items()):
        files = metadata.distribution(name).files or []
        compiled = any(str(f).endswith((".so", ".pyd")) for f in files)
        if compiled:
            command = pip + ["download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                             "--implementation", "cp", "--platform", "manylinux_2_17_x86_64",
                             "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64",
                             "--dest", str(OUT), f"{name}=={version}"]
        else:
            command = pip + ["wheel", "--no-deps", "--wheel-dir", str(OUT), f"{name}=={version}"]
        subprocess.run(command, check=True)
    print(f"{len(list(OUT.glob('*.whl')))} wheels in {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
