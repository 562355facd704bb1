"""`python -m rpsflax.export`: see rpsflax/export/cli.py."""

from rpsflax.export import cli

if __name__ == "__main__":
  cli.run()
