"""Coffer against OpenBao and against the limits, on one machine, in one run (issue #8). See bench/README.md."""
