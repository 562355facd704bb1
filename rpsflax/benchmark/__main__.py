"""`python -m rpsflax.benchmark ...`: rpsflax/benchmark/cli.py."""

import sys

from rpsflax.benchmark import cli

if __name__ == "__main__":
  sys.exit(cli.main())
