"""``python -m velo_am``: the ``velo-am`` command line (see ``velo-am --help``)."""

import sys

from ._cli import main

sys.exit(main())
