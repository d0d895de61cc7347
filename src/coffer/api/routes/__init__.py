"""Route tables: one module per family of operations."""
