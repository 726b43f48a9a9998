"""`python -m vmid.cli`: the CLI without vmid.__main__'s held signals (tests, tools)."""

import sys

from vmid.cli import main

sys.exit(main())
