#!/bin/sh
# The database roles Oasis runs with, created once when the timescaledb container initialises an
# empty data volume (docker-compose.yml mounts this file into /docker-entrypoint-initdb.d, after
# 100-oasis-init.sql). Passwords come from the container's environment, never from the repository.
#
#   POSTGRES_USER              bootstrap superuser: administration only, no application uses it
#   POSTGRES_APP_USER          the application (web, worker, beat, ingestor, trader): LOGIN, no
#                              superuser, no CREATEDB/CREATEROLE; owns the tables its migrations
#                              create in schema public, and nothing else
#   POSTGRES_READONLY_USER     analysts and Grafana: SELECT on the application's tables, present
#                              and future, in read-only transactions with a statement timeout.
#                              POSTGRES_READONLY_PASSWORD empty: a NOLOGIN group role, to GRANT to
#                              personal analyst roles instead
#
# Idempotent: on a volume initialised before this script existed, or to change a password, run it
# by hand (docs/decisions/0008-compose-migrations-in-web.md, addendum):
#   docker compose exec timescaledb sh /docker-entrypoint-initdb.d/200-oasis-roles.sh
# It then also hands the tables the bootstrap superuser created in public to the application role.
set -eu

: "${POSTGRES_APP_USER:=oasis_app}"
: "${POSTGRES_READONLY_USER:=oasis_readonly}"
: "${POSTGRES_READONLY_PASSWORD:=}"
if [ -z "${POSTGRES_APP_PASSWORD:-}" ]; then
    echo "200-oasis-roles.sh: POSTGRES_APP_PASSWORD is empty; set it in .env (see .env.example)" >&2
    exit 1
fi
for role in "$POSTGRES_APP_USER" "$POSTGRES_READONLY_USER"; do
    if [ "$role" = "$POSTGRES_USER" ]; then
        echo "200-oasis-roles.sh: $role is the bootstrap superuser; choose another name" >&2
        exit 1
    fi
done
export POSTGRES_APP_USER POSTGRES_APP_PASSWORD POSTGRES_READONLY_USER POSTGRES_READONLY_PASSWORD

# The passwords travel through the environment (\getenv), not psql's command line, where any
# process in the container could read them.
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
\getenv app_user POSTGRES_APP_USER
\getenv app_password POSTGRES_APP_PASSWORD
\getenv readonly_user POSTGRES_READONLY_USER
\getenv readonly_password POSTGRES_READONLY_PASSWORD
\getenv database POSTGRES_DB

SELECT format('CREATE ROLE %I', :'app_user')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'app_user') \gexec
ALTER ROLE :"app_user" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    INHERIT PASSWORD :'app_password';

SELECT format('CREATE ROLE %I', :'readonly_user')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'readonly_user') \gexec
ALTER ROLE :"readonly_user" WITH NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD %L', :'readonly_user', :'readonly_password')
WHERE :'readonly_password' <> '' \gexec
SELECT format('ALTER ROLE %I WITH NOLOGIN PASSWORD NULL', :'readonly_user')
WHERE :'readonly_password' = '' \gexec
-- Read-only even if a grant slips through, and no query holds the database for long.
ALTER ROLE :"readonly_user" SET default_transaction_read_only = on;
ALTER ROLE :"readonly_user" SET statement_timeout = '60s';

-- Nobody else connects; the application may create tables (its migrations) in public only.
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"database" TO :"app_user";
GRANT CONNECT ON DATABASE :"database" TO :"readonly_user";
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO :"app_user";
GRANT USAGE ON SCHEMA public TO :"readonly_user";

-- A volume migrated by the bootstrap superuser (before these roles existed): its tables and views
-- become the application's, so its next migrations can alter them (a hypertable's chunks follow).
-- Sequences of identity columns follow their table. On a fresh volume there is nothing to move.
SELECT format('ALTER %s %I.%I OWNER TO %I',
              CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END,
              n.nspname, c.relname, :'app_user')
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public'
  AND c.relkind IN ('r', 'p', 'v', 'm')
  AND pg_get_userbyid(c.relowner) = current_user
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.objid = c.oid AND d.deptype = 'e') \gexec

-- What exists now, and what the application's migrations create later.
GRANT SELECT ON ALL TABLES IN SCHEMA public TO :"readonly_user";
ALTER DEFAULT PRIVILEGES FOR ROLE :"app_user" IN SCHEMA public GRANT SELECT ON TABLES TO :"readonly_user";
SQL
