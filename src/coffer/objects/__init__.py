"""Key Vault objects (secrets now; keys and certificates later). They see a VaultView, never storage."""
