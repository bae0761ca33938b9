"""Subcommands of the ``lfopt`` command line (one module each)."""
