"""REST API of the audit log: its events, read only (under /api/v1/)."""
