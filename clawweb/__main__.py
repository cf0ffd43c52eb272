"""``python -m clawweb doctor|warmup``."""

import sys

from .doctor import main

sys.exit(main())
