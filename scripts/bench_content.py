"""What content vectors cost a build: the same log and catalog built with --content off and
on, side by side, with the content stage and the hybrid neighbours timed.

    python scripts/bench_content.py --items 200000 --json docs/results/content-build-200k.json

Generates the sample shape at --items (2x users, 10 events per item, 20 categories) under
--work unless it exists (bench_filters.py uses the same files). Prints per-stage seconds of
both builds and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from svdfaiss.builder import BuildConfig, build
from svdfaiss.synthetic import SampleSpec, write_sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/svdfaiss-bench"))
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    data = args.work / f"filters-{args.items}"
    events, catalog = data / "events.csv", data / "items.csv"
    if not events.exists():
        write_sample(SampleSpec(users=args.items * 2, items=args.items,
                                events=args.items * 10, categories=20), data)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for content in ("off", "on"):
            start = time.perf_counter()
            report = build(BuildConfig(input=events, model=f"content-{content}",
                                       index_dir=Path(tmp), catalog=catalog,
                                       content=content))  # type: ignore[arg-type]
            runs[content] = {"total_s": round(time.perf_counter() - start, 1),
                             "stages_s": report.seconds,
                             "items": report.manifest["counts"]["items"],
                             "content": report.manifest["content"]}
    stages = list(dict.fromkeys([*runs["off"]["stages_s"], *runs["on"]["stages_s"]]))
    print(f"{runs['on']['items']:,} items; catalog {catalog}")
    print(f"{'stage':<20} {'content off':>12} {'content on':>12}")
    for stage in stages:
        print(f"{stage:<20} {runs['off']['stages_s'].get(stage, 0.0):>12.2f} "
              f"{runs['on']['stages_s'].get(stage, 0.0):>12.2f}")
    print(f"{'total':<20} {runs['off']['total_s']:>12.2f} {runs['on']['total_s']:>12.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"),
                                         "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
