"""HTTP edge: Azure's wire format over Starlette requests and responses."""
