"""`s5vh query --jsonl` on an index of time windows -> the partial-copy predictions `benchmarks.copy_eval` scores.

Reads JSON lines as `s5vh query INDEX PARTIAL --jsonl` prints them (one per query: its results are videos with
`video_range_s`) and writes one line per query: {"query": file name, "results": [{"video", "start_s", "end_s"},
...]}, best first.

Usage: python -m benchmarks.query_to_partial QUERY.jsonl -o predictions.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def convert(lines: list[str]) -> list[dict]:
    out = []
    for line in lines:
        if not line.strip():
            continue
        q = json.loads(line)
        name = Path(q.get("query_path") or q["query"]).name
        out.append({"query": name, "results": [{"video": Path(r["id"]).name, "start_s": r["video_range_s"][0],
                                                "end_s": r["video_range_s"][1]} for r in q["results"]]})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.query_to_partial", description=__doc__.split("\n\n")[0])
    ap.add_argument("queries", help="output of `s5vh query ... --jsonl`")
    ap.add_argument("-o", "--out", required=True)
    a = ap.parse_args(argv)
    rows = convert(Path(a.queries).read_text().splitlines())
    Path(a.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} queries -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
