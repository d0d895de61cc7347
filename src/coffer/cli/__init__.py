"""The `coffer` command line."""
