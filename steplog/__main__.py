"""``python -m steplog``: the same as the ``steplog`` command."""

from steplog.cli import main

raise SystemExit(main())
