"""The benchmark's apps: one module per implementation, all serving the same three endpoints."""
