"""The request pipeline, free of HTTP: authenticate → authorize → execute in a transaction → audit → commit."""

from coffer.core.pipeline import Context, Operation, Pipeline, RequestInfo, Result

__all__ = ["Context", "Operation", "Pipeline", "RequestInfo", "Result"]
