"""``python -m rnnserve.cli``: the same as the ``rnnserve`` console script."""

import sys

from . import main

sys.exit(main())
