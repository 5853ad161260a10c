"""``python -m amqpd``."""

from amqpd.cli import main

raise SystemExit(main())
