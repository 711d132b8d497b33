"""Entry point: `python -m tpu_setup SUBCOMMAND ...`."""
import sys

from tpu_setup.cli import main

if __name__ == "__main__":
  sys.exit(main())
