"""`python -m tollway.service.cli`: the same as the `tollway` console script."""

import sys

from .main import main

sys.exit(main())
