"""Who is calling: Coffer's token service (in the role Entra ID plays for Key Vault)."""
