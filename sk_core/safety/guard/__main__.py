"""``python -m sk_core.safety.guard --evaluate``: measure the detector on the bundled corpus."""

from sk_core.safety.guard._evaluation import _main

raise SystemExit(_main())
