"""Fill a vault of a *stopped* Coffer server with many secrets, in-process, the way the server writes them.

Writing 1,000,000 secrets through HTTP would take most of an hour; this uses Coffer's own modules on the data
directory instead: the barrier is unsealed with the shares kept at `init` (3 of 5), and each secret is written by
`coffer.objects.secret.set` on a `VaultView` inside a storage write transaction, exactly the calls the
`SecretSet` route makes in the server (name and value checks, a new version id, the value sealed with the vault's
data key and AAD bound to vault/kind/name/version/field), only many per transaction. The server must be stopped:
it caches nothing about secrets, but one writer at a time keeps the run simple and fast.

    python -m bench.compare.fill --data-dir D --init-file D/../coffer-init.json --vault bench --start 1000 --end 1000000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.compare.model import secret_name, secret_value

from coffer.barrier import Barrier, VaultView
from coffer.objects import secret
from coffer.storage import open_storage


def fill(data_dir: Path, shares: list[str], vault_name: str, start: int, end: int, batch: int) -> float:
    """Secrets secret_name(i) for start <= i < end. Returns the seconds it took."""
    storage = open_storage(data_dir)
    try:
        barrier = Barrier(storage)
        status = None
        for share in shares:
            status = barrier.submit_share(share)
            if not status.sealed:
                break
        if status is None or status.sealed:
            raise SystemExit("the shares did not unseal the installation")
        t0 = time.monotonic()
        done = start
        while done < end:
            upto = min(end, done + batch)
            with storage.write() as tx:
                row = tx.vault_get(vault_name)
                if row is None:
                    raise SystemExit(f"no vault {vault_name}")
                view = VaultView(tx, barrier, row)
                for i in range(done, upto):
                    secret.set(view, secret_name(i), secret_value(i))
            done = upto
            if (done - start) % (batch * 10) == 0 or done == end:
                elapsed = time.monotonic() - t0
                print(f"  filled {done:,} / {end:,} ({(done - start) / elapsed:,.0f} secrets/s)", flush=True)
        return time.monotonic() - t0
    finally:
        storage.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--init-file", type=Path, required=True, help="JSON with the unseal shares kept at init")
    p.add_argument("--vault", default="bench")
    p.add_argument("--start", type=int, required=True)
    p.add_argument("--end", type=int, required=True)
    p.add_argument("--batch", type=int, default=5000, help="secrets per write transaction")
    args = p.parse_args()
    shares = json.loads(args.init_file.read_text())["shares"]
    seconds = fill(args.data_dir, shares, args.vault, args.start, args.end, args.batch)
    print(json.dumps({"filled": args.end - args.start, "seconds": round(seconds, 1)}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
