"""What ONNX Runtime's thread spinning costs an app: CPU seconds per query, spinning off and on.

    python -m benchmarks.spinning [--bundle B --library L --page P] [--queries 30] [--gap 0.2]
                                  [--threads 2] [--json OUT]

With spinning on, ORT's intra-op worker threads spin-wait for work after each parallel
section instead of sleeping: a little lower latency for back-to-back runs, paid in CPU time
(battery, heat, other apps' share) during every pause. An app that queries when a page is
turned pauses between queries, so the runtime turns spinning off by default
(``runtime.sessions``); this measures both, in one process, each setting in its own
``Retriever``:

- paced: one page query (``Retriever.query``: decode, preprocess, image encoder, search)
  every ``--gap`` seconds, as a reader turns pages; CPU seconds of the whole process per
  query, idle gap included (that is where spinning burns), and wall milliseconds of the
  query itself;
- back to back: the same queries with no gap (a batch job), the case spinning is for.

Every setting is passed explicitly and printed with the CPU's model and int8 features
(``runtime.cpu``). Defaults: the shipped demo bundle, library and a demo page.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = ROOT / "runtime" / "defaults"


def _cpu_seconds() -> float:
    # All threads of the process (ORT's workers included), user + system.
    t = os.times()
    return t.user + t.system


def measure(bundle: Path, library: Path, page: Path, spinning: bool, threads: int, queries: int, gap: float) -> dict:
    from runtime import Retriever

    with Retriever(bundle=bundle, library=library, device="cpu", precision="int8", threads=threads,
                   spinning=spinning, selfcheck=False) as r:
        for _ in range(3):  # sessions made, caches warm
            r.query(page, top_k=10)
        out = {}
        for mode, pause in (("paced", gap), ("back_to_back", 0.0)):
            walls = []
            c0 = _cpu_seconds()
            for _ in range(queries):
                t = time.perf_counter()
                r.query(page, top_k=10)
                walls.append(time.perf_counter() - t)
                if pause:
                    time.sleep(pause)
            cpu = _cpu_seconds() - c0
            out[mode] = {"cpu_s_per_query": cpu / queries, "wall_ms_median": 1e3 * statistics.median(walls),
                         "wall_ms_mean": 1e3 * statistics.fmean(walls), "queries": queries, "gap_s": pause}
        out["settings"] = r.encoders.settings.describe()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.spinning", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=DEFAULTS / "bundle")
    p.add_argument("--library", type=Path, default=DEFAULTS / "library")
    p.add_argument("--page", type=Path, default=DEFAULTS / "pages" / "love_romance_01.jpg")
    p.add_argument("--queries", type=int, default=30, help="queries per setting and mode (default 30)")
    p.add_argument("--gap", type=float, default=0.2, help="seconds between paced queries (default 0.2)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    p.add_argument("--rounds", type=int, default=2, help="off/on alternations, to average out a busy machine")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)

    from runtime.cpu import cpu_info

    cpu = cpu_info()
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        for name, spinning in (("off", False), ("on", True)):
            runs[name].append(measure(args.bundle, args.library, args.page, spinning, args.threads, args.queries,
                                      args.gap))
    result = {"cpu": cpu.model, "int8_features": list(cpu.features), "logical_cpus": os.cpu_count(),
              "threads": args.threads, "bundle": str(args.bundle), "runs": runs}
    print(f"CPU: {cpu.model}; int8 features: {', '.join(cpu.features) or 'none'}; "
          f"{os.cpu_count()} logical CPUs; {args.threads} intra-op threads; {args.queries} queries a run, "
          f"{args.rounds} runs a setting")
    print(f"{'spinning':9s} {'mode':13s} {'CPU s/query':>12s} {'wall ms (median)':>17s}")
    for name, rs in runs.items():
        for mode in ("paced", "back_to_back"):
            cpu_s = statistics.fmean(r[mode]["cpu_s_per_query"] for r in rs)
            wall = statistics.fmean(r[mode]["wall_ms_median"] for r in rs)
            label = f"{mode} ({args.gap:g} s gap)" if mode == "paced" else "back to back"
            print(f"{name:9s} {label:13s} {cpu_s:12.4f} {wall:17.1f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
