"""``python -m fastdistill``: the command line (``fastdistill.cli``)."""

import sys

from fastdistill.cli import main

if __name__ == "__main__":
    sys.exit(main())
