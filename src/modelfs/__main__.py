"""`python -m modelfs`: the same as the `modelfs` command (`cli.main`)."""

from modelfs.cli import main

raise SystemExit(main())
