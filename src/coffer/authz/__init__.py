"""May this caller do this to that? (The RBAC and access-policy issue fills this seam.)"""

from coffer.authz.decide import Decision, authorize

__all__ = ["Decision", "authorize"]
