"""Security tests: row-level security, token storage and hostile input."""
