#!/usr/bin/env python3
"""Per-group pjdfstest results of `strata bench guest --workload pjdfstest` runs.

Usage: conformance_table.py WORKDIR
Reads WORKDIR/<setup>-<run>/console.log (the `@pjd NAME RESULT` and `@pjd-why NAME TEXT` lines
the guest printed), prints passed/failed/skipped per test group and setup, then every case that
fails on a strata setup but not on virtiofsd (a), with the first line of its error.
"""
import collections
import pathlib
import sys

LABELS = {
    "virtiofsd": "(a) virtiofsd",
    "strata-layers": "(b) strata",
    "strata": "(b2) strata+layer dev",
    "strata-union": "(f) strata --union",
}


def read(log):
    res, why = {}, {}
    for line in log.read_text(errors="replace").splitlines():
        i = line.find("@pjd")
        if i < 0:
            continue
        f = line[i:].split(None, 2)
        if f[0] == "@pjd" and len(f) == 3:
            res[f[1]] = f[2].strip()
        elif f[0] == "@pjd-why" and len(f) == 3:
            why.setdefault(f[1], f[2].strip())
    return res, why


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    work = pathlib.Path(sys.argv[1])
    runs = {}
    for log in sorted(work.glob("*-*/console.log")):
        setup = log.parent.name.rsplit("-", 1)[0]
        if setup in LABELS:
            runs[setup] = read(log)
    if not runs:
        sys.exit(f"no console.log with @pjd lines under {work}")
    setups = [s for s in LABELS if s in runs]
    groups = sorted({n.split("::")[0] for s in setups for n in runs[s][0]})
    head = f"{'group':<12}" + "".join(f"{LABELS[s]:>26}" for s in setups)
    print(head)
    print(" " * 12 + "".join(f"{'pass/fail/skip':>26}" for _ in setups))
    totals = {s: collections.Counter() for s in setups}
    for g in groups:
        row = f"{g:<12}"
        for s in setups:
            c = collections.Counter(
                r for n, r in runs[s][0].items() if n.split("::")[0] == g
            )
            totals[s].update(c)
            row += f"{c['ok']:>14}/{c['FAILED']}/{c['skipped']}".rjust(26)
        print(row)
    row = f"{'total':<12}"
    for s in setups:
        c = totals[s]
        row += f"{c['ok']:>14}/{c['FAILED']}/{c['skipped']}".rjust(26)
    print(row)
    base = runs.get("virtiofsd", ({}, {}))[0]
    for s in setups:
        if s == "virtiofsd":
            continue
        only = sorted(
            n for n, r in runs[s][0].items() if r == "FAILED" and base.get(n) != "FAILED"
        )
        title = "only" if "virtiofsd" in runs else "(no (a) run to compare)"
        print(f"\nfailing on {LABELS[s]} {title} ({len(only)}):")
        for n in only:
            print(f"  {n}: {runs[s][1].get(n, '?')}")
    if "virtiofsd" in runs:
        for s in setups:
            if s == "virtiofsd":
                continue
            only = sorted(
                n
                for n, r in base.items()
                if r == "FAILED" and runs[s][0].get(n) != "FAILED"
            )
            print(f"\nfailing on (a) only, not on {LABELS[s]} ({len(only)}):")
            for n in only:
                print(f"  {n}: {runs['virtiofsd'][1].get(n, '?')}")


if __name__ == "__main__":
    main()
