"""``python -m sae_hub``: the same command line as the ``sae-hub`` script."""

import sys

from sae_hub.cli import main

sys.exit(main())
