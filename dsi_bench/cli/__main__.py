"""``python -m dsi_bench.cli`` (and ``torchrun -m dsi_bench.cli``)."""

import sys

from . import main

sys.exit(main())
