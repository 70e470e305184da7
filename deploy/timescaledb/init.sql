-- Runs once, when the timescaledb container initialises an empty data volume
-- (mounted into /docker-entrypoint-initdb.d by docker-compose.yml), in POSTGRES_DB.
-- The timescale image already creates the extension there; this keeps it explicit and
-- idempotent should the image's own init script ever change.
CREATE EXTENSION IF NOT EXISTS timescaledb;
