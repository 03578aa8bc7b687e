"""``python -m pipelines.cli``: the ``anomaly`` command."""

import sys

from pipelines.cli.main import main

sys.exit(main())
