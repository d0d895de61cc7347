#!/usr/bin/env bash
# Compare uvicorn and granian, raw ASGI vs Starlette Request/Response, 1 and 2 workers, over HTTPS.
# Usage: bench/stack/run.sh [extra drive.py options, e.g. --duration 5 --workers 1]
# Env: PYTHON (default: the repo's .venv/bin/python), OUT (default: bench/results/stack-<UTC date>[-N].md)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
if [[ -z "${OUT:-}" ]]; then
    # bench/results/stack-<UTC date>.md; later runs the same day get -2, -3, ... rather than overwriting.
    base="$root/bench/results/stack-$(date -u +%Y-%m-%d)"
    out="$base.md"
    n=2
    while [[ -e "$out" ]]; do out="$base-$n.md"; n=$((n + 1)); done
else
    out="$OUT"
fi

if ! command -v wrk >/dev/null; then
    echo "wrk not found; install it: apt-get update && apt-get install -y wrk" >&2
    exit 1
fi
command -v openssl >/dev/null || { echo "openssl not found" >&2; exit 1; }
"$python" -c 'import uvicorn, uvloop, httptools, granian, starlette, orjson' || {
    echo "missing Python packages in $python: need uvicorn[standard] granian starlette orjson" >&2
    exit 1
}

tmp="$(mktemp -d -t coffer-bench-stack.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT

# Self-signed EC P-256 certificate, like Coffer's own; OpenSSL 3 writes the key as PKCS#8, which granian requires.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null

mkdir -p "$tmp/logs"
"$python" "$here/drive.py" --cert "$tmp/cert.pem" --key "$tmp/key.pem" --out "$out" --logs "$tmp/logs" "$@" || {
    echo "--- server logs ---" >&2
    tail -n 20 "$tmp"/logs/*.log >&2 || true
    exit 1
}
