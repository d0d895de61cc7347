"""The audit log: one JSON line per request, fail closed."""

from coffer.audit.log import AuditError, AuditLog

__all__ = ["AuditError", "AuditLog"]
