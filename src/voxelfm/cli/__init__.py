"""The ``voxelfm`` command: one subcommand per module in this package, thin over the Python API."""
