#!/usr/bin/env bash
# Coffer (production settings) against OpenBao and against the limits, on this machine, in one run.
# Usage: bench/compare/run.sh [--seconds N] [--million] [--profile] [--smoke] [--coffer-workers N] [--help]
# Env: PYTHON (default: the repository's .venv/bin/python). Writes bench/results/compare-<UTC date>[-N].md and .json.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
"$python" -c 'import coffer, httpx, cryptography, azure.keyvault.secrets, azure.keyvault.keys, azure.identity' || {
    echo "missing packages in $python: run ./scripts/test once (it installs the test extras), or pip install -e '.[test]'" >&2
    exit 1
}
cd "$root"
exec "$python" -m bench.compare "$@"
