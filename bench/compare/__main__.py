"""`python -m bench.compare` (from the repository root): see bench/compare/run.py and bench/README.md."""

import sys

from bench.compare.run import main

sys.exit(main())
