"""Appends a pytest-benchmark JSON run (``--benchmark-json F``) to a CSV history, one row per case:
benchmark, gpu, commit, timestamp, group, case, median_ms, min_ms, rounds.

Run: python benchmarks/results_to_csv.py F [--csv benchmarks/results/gpu_latency.csv]
"""
import argparse
import csv
import json
from pathlib import Path

FIELDS = ["benchmark", "gpu", "commit", "timestamp", "group", "case", "median_ms", "min_ms", "rounds"]


def rows(run: dict, commit_id: str | None = None) -> list[dict]:
    machine, commit = run.get("machine_info", {}), run.get("commit_info", {})
    gpu = machine.get("gpu") or machine.get("cpu", {}).get("brand_raw", "")
    out = []
    for b in run["benchmarks"]:
        stats = b["stats"]
        out.append({"benchmark": b["name"].split("[")[0], "gpu": gpu, "commit": commit_id or commit.get("id", "")[:7],
                    "timestamp": run.get("datetime", ""), "group": b.get("group") or "", "case": b["name"],
                    "median_ms": round(stats["median"] * 1e3, 4), "min_ms": round(stats["min"] * 1e3, 4),
                    "rounds": stats["rounds"]})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json")
    ap.add_argument("--csv", default=str(Path(__file__).parent / "results" / "gpu_latency.csv"))
    ap.add_argument("--commit", help="the commit measured, where the run's own git record is stale (a lent GPU's copy)")
    args = ap.parse_args()
    new = rows(json.loads(Path(args.json).read_text()), args.commit)
    path = Path(args.csv)
    first = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if first:
            w.writeheader()
        w.writerows(new)
    print(f"{len(new)} rows appended to {path}")


if __name__ == "__main__":
    main()
