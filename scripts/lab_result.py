"""Write the lab result block into docs/lab.md from a `strata lab --output` file."""
import json
import re
import sys

rep = json.load(open(sys.argv[1]))


def start(run, phase, name):
    for p in run["phases"]:
        if p["phase"] == phase:
            for s in p["strategies"]:
                if s["name"] == name and s["phase"] == "start":
                    return s
    return {"max_ms": float("nan"), "p999_ms": float("nan")}


rows = [
    "| kernel | strategy | idle: start max (ms) | under pressure: start p99.9 (ms) | under pressure: start max (ms) |",
    "|---|---|---|---|---|",
]
for run in rep["runs"]:
    for name in ["overlay-mount", "tmpfs-mount", "strata", "strata-daemon"]:
        i, p = start(run, "idle", name), start(run, "pressure", name)
        rows.append(
            f"| {run['kernel']} ({run['release']}) | {name} | {i['max_ms']:.1f} "
            f"| {p['p999_ms']:.1f} | **{p['max_ms']:.1f}** |"
        )
block = "\n".join(
    [
        "<!-- LAB-RESULT:BEGIN -->",
        f"Scenario `{rep['runs'][0]['scenario']}`, from `scripts/lab-result`:",
        "",
        *rows,
        "",
        "Full table with end phases and reclaim counters: [lab/table.txt](lab/table.txt).",
        "",
        "![container start latency tail, 6.1 vs 6.12](lab/tail.svg)",
        "<!-- LAB-RESULT:END -->",
    ]
)
readme = open("docs/lab.md").read()
new, n = re.subn(
    r"<!-- LAB-RESULT:BEGIN -->.*<!-- LAB-RESULT:END -->", lambda m: block, readme, flags=re.S
)
if n != 1:
    sys.exit("docs/lab.md has no LAB-RESULT markers")
open("docs/lab.md", "w").write(new)
print("docs/lab.md updated")
