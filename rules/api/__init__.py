"""REST API of rules: rule configs and their versions, signals, indicators (under /api/v1/)."""
