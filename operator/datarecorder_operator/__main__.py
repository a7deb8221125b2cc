"""`python -m datarecorder_operator ...`: the same entry point as `datarecorder operator ...`."""

import sys

from datarecorder_operator.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
