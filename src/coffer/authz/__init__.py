"""May this caller do this to that? Azure RBAC down to a single object, and legacy access policies."""

from coffer.authz.decide import Authorizer, Decision

__all__ = ["Authorizer", "Decision"]
