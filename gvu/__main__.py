"""`python -m gvu` is the `gvu` command."""

import sys

from gvu.cli import main

sys.exit(main())
