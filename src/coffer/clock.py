"""Time, in Key Vault's unit: integer seconds since the epoch."""

import time


def now() -> int:
    return int(time.time())
