"""``python -m gendistill.cli``."""

import sys

from gendistill.cli import main

sys.exit(main())
