"""Mutation score per module from `mutmut results --all true` (run after `mutmut run`; `make mutation` does both).

score = (killed + timeout) / mutants, where a mutant no test reaches ("no tests") counts as surviving.
`--survivors` also sorts the surviving mutants by the kind of line they change (first matching pattern wins),
reading each mutant's source from mutants/ and printing its changed line; tests/README.md judges the kinds.
"""
from __future__ import annotations

import ast
import collections
import difflib
import json
import re
import subprocess
import sys
from pathlib import Path

# (kind, pattern on the mutated line): the first that matches names the kind
KINDS = [
    ("signature default", r"^\s*(def |class |\w+: .*(Annotated\[|: (int|str|float|bool)\b.*=))"),
    ("device placement or a CUDA-only argument", r"cuda|CUDA|device|\.to\(|pin_memory|non_blocking|foreach|"
                                                 r"empty_cache|channels_last"),
    ("data-parallel only (world > 1)", r"world|DistributedDataParallel|all_reduce|ctx\.main|[-+] rank\b|"
                                       r"1_000_003|4099"),
    ("progress bar, timing or stderr telemetry", r"tqdm|progress|perf_counter|elapsed|isatty|images_per_s|nfe_per_s|"
                                                 r"print\(|sys\.stderr"),
    ("JSON key order, index flags, hashing block size", r"sort_keys|reset_index|index=|\.read\(|<<|1 << 2"),
    ("error or log message text", r"raise |fail\(|Error\(|_log\(|\"event\"|XX|\"[A-Z ]+\""),
]


def counts() -> tuple[dict[str, collections.Counter], list[str]]:
    """Mutant status counts per module, and the survivors' names under the key '_survivors'."""
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], capture_output=True,
                         text=True, check=True).stdout
    per: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    survivors = []
    for line in out.splitlines():
        match = re.match(r"\s*(ied\.(\w+)\.\S+): (.+)$", line)
        if match:
            per[match.group(2)][match.group(3).strip()] += 1
            if match.group(3).strip() in ("survived", "no tests"):
                survivors.append(match.group(1))
    return per, survivors


def changed_line(name: str, sources: dict[str, dict[str, str]]) -> str:
    """The line a mutant changes, read from mutmut's copy of the module in mutants/."""
    module, function = name.split(".")[1], name.split(".", 2)[2]
    if module not in sources:
        text = Path("mutants/src/ied", module + ".py").read_text()
        lines = text.splitlines()
        sources[module] = {node.name: "\n".join(lines[node.lineno - 1:node.end_lineno]) for node in ast.walk(ast.parse(text))
                           if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    mutant = sources[module].get(function, "")
    orig = sources[module].get(function.rsplit("__mutmut_", 1)[0] + "__mutmut_orig", "")
    diff = [d[2:] for d in difflib.ndiff(orig.splitlines(), mutant.splitlines()) if d.startswith("+ ")]
    return diff[-1].strip() if diff else "(a removed line)"


def main() -> int:
    per, survivors = counts()
    report = {}
    for module, c in sorted(per.items()):
        total = sum(c.values())
        caught = c["killed"] + c["timeout"]
        report[module] = {"mutants": total, "killed": c["killed"], "timeout": c["timeout"], "survived": c["survived"],
                          "no tests": c["no tests"], "not checked": c["not checked"],
                          "score": round(100 * caught / total, 1) if total else None}
    if "--survivors" in sys.argv:
        sources: dict[str, dict[str, str]] = {}
        kinds: dict[str, dict[str, list[str]]] = collections.defaultdict(lambda: collections.defaultdict(list))
        for name in survivors:
            line = changed_line(name, sources)
            kind = next((k for k, pattern in KINDS if re.search(pattern, line)), "other")
            kinds[name.split(".")[1]][kind].append(f"{name}: {line[:140]}")
        for module, by_kind in kinds.items():
            report[module]["survivors"] = {k: {"count": len(v), "mutants": v} for k, v in sorted(by_kind.items())}
    json.dump(report, sys.stdout, indent=1, ensure_ascii=False)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
