"""Subcommands of the ``dopamine`` CLI, one module per area (see core/cli.py)."""
