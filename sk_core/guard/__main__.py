"""``python -m sk_core.guard --evaluate``: measure the detector on the bundled corpus."""

from sk_core.guard._evaluation import _main

raise SystemExit(_main())
