"""`python -m qcore.cli`: the `qlab` command."""

import sys

from qcore.cli import main

sys.exit(main())
