"""One exception tree for everything a request can fail with.

    CofferError                 status + Azure error code + message (+ inner code)
    ├── BadParameter            400
    ├── Unauthorized            401 (answered with the bearer challenge)
    ├── Forbidden               403
    ├── NotFound                404
    ├── Conflict                409
    ├── RequestTimeout          408
    ├── PayloadTooLarge         413
    ├── Throttled               429
    └── Sealed                  503

Messages are shown to clients and written to the audit log: they never contain a secret value,
key material, token or password.
"""

from __future__ import annotations


class CofferError(Exception):
    status = 500
    code = "InternalError"

    def __init__(self, message: str, *, code: str | None = None, inner: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.inner = inner

    def envelope(self) -> dict[str, object]:
        error: dict[str, object] = {"code": self.code, "message": self.message}
        if self.inner:
            error["innererror"] = {"code": self.inner}
        return {"error": error}


class BadParameter(CofferError):
    status = 400
    code = "BadParameter"


class Unauthorized(CofferError):
    status = 401
    code = "Unauthorized"

    def __init__(
        self,
        message: str = "AKV10000: Request is missing a Bearer or PoP token.",
        *,
        claims_challenge: bool = False,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.claims_challenge = claims_challenge
        self.reason = reason  # why, for the audit log only: the client sees just `message`


class Forbidden(CofferError):
    status = 403
    code = "Forbidden"


class NotFound(CofferError):
    status = 404
    code = "NotFound"


class MethodNotAllowed(CofferError):
    status = 405
    code = "MethodNotAllowed"


class Conflict(CofferError):
    status = 409
    code = "Conflict"


class RequestTimeout(CofferError):
    status = 408
    code = "RequestTimeout"


class PayloadTooLarge(CofferError):
    status = 413
    code = "RequestEntityTooLarge"


class Throttled(CofferError):
    status = 429
    code = "Throttled"

    def __init__(
        self,
        message: str = "Request was not processed because too many requests were received. "
        "Reason: VaultRequestTypeLimitReached",
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds, sent as Retry-After (the SDKs retry a throttled POST only with it)


class Sealed(CofferError):
    status = 503
    code = "ServiceUnavailable"

    def __init__(
        self,
        message: str = "Coffer is sealed. An operator must unseal it "
        "(coffer operator unseal) before it serves requests.",
    ) -> None:
        super().__init__(message)
