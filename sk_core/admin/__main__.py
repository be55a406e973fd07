"""``python -m sk_core.admin``."""

import sys

from sk_core.admin._cli import main

sys.exit(main())
