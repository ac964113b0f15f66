"""Mutation score per module from `mutmut results --all true` (run after `mutmut run`; `make mutation` does both).

score = (killed + timeout) / mutants, where a mutant no test reaches ("no tests") counts as surviving.
"""
from __future__ import annotations

import collections
import json
import re
import subprocess
import sys


def main() -> int:
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], capture_output=True,
                         text=True, check=True).stdout
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in out.splitlines():
        match = re.match(r"\s*ied\.(\w+)\.\S+: (.+)$", line)
        if match:
            counts[match.group(1)][match.group(2).strip()] += 1
    report = {}
    for module, c in sorted(counts.items()):
        total = sum(c.values())
        caught = c["killed"] + c["timeout"]
        report[module] = {"mutants": total, "killed": c["killed"], "timeout": c["timeout"], "survived": c["survived"],
                          "no tests": c["no tests"], "not checked": c["not checked"],
                          "score": round(100 * caught / total, 1) if total else None}
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
