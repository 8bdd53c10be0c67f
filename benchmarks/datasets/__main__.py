"""``python -m benchmarks.datasets align|check``: reorder label files to a features file, or check a dataset."""

from __future__ import annotations

import argparse
import json
import sys

from s5vh_cli.errors import S5VHError

from . import check_dataset, write_aligned


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.datasets")
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("align", help="write a label file whose rows follow the ids of a features/codes file")
    a.add_argument("--labels", required=True, help="label file from a dataset builder (labels/<split>_<level>.h5)")
    a.add_argument("--features", required=True, help="features (or codes) artifact whose 'ids' set the order")
    a.add_argument("-o", "--out", required=True, help="aligned label file to write")
    c = sub.add_parser("check", help="check that manifest, video files and label files of a dataset agree")
    c.add_argument("root", help="dataset folder (holds manifest.csv)")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "align":
            print(write_aligned(args.labels, args.features, args.out))
        else:
            print(json.dumps(check_dataset(args.root)))
    except S5VHError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
