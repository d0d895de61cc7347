"""Coffer: a self-hosted secrets, keys and certificates service speaking the Azure Key Vault REST API."""

__version__ = "0.1.0"
