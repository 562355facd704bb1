"""`python -m rpsflax.benchmark ...`: rpsflax/benchmark/cli.py."""

import sys

import rpsflax.benchmark
from rpsflax.benchmark import cli

# absl's --help prints __main__'s docstring: the package's, which says what each figure means.
__doc__ = rpsflax.benchmark.__doc__

if __name__ == "__main__":
  sys.exit(cli.main())
