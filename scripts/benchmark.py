#!/usr/bin/env python
"""Throughput of a config on this machine (see rpsflax/benchmark/__init__.py for what each figure
means).

  python scripts/benchmark.py --config=configs/rps.py --compare-keras --data_dir=../shared/data/rps
  python scripts/benchmark.py --config=configs/catsdogs.py --json --out=bench.json

The same as `python -m rpsflax.benchmark ...`.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout

from rpsflax.benchmark import cli  # noqa: E402

if __name__ == "__main__":
  sys.exit(cli.main())
