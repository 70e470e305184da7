# syntax=docker/dockerfile:1
# Oasis production image. Two stages: the builder installs the pinned runtime packages
# (requirements.txt) into a virtualenv, the runtime stage copies only that virtualenv and
# the project. No secret is baked into any layer: all configuration comes from the
# environment at run time (.env.example documents it, docker-compose.yml supplies it).

FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt


FROM python:3.11-slim-bookworm AS runtime

# OASIS_BIND=0.0.0.0: inside a container the server must listen on all interfaces;
# publish the port on the host's loopback (docker-compose.yml does) or behind a proxy.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OASIS_ENV=prod \
    OASIS_BIND=0.0.0.0 \
    OASIS_PORT=8000

RUN groupadd --system --gid 10001 oasis \
    && useradd --system --uid 10001 --gid oasis --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin oasis

# pg_dump/pg_restore for `manage.py backup`/`restore` (the backup CronJob runs this image):
# Debian bookworm's client is PostgreSQL 15, the server's major version.
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client \
    && rm -rf /var/lib/apt/lists/*

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
# The code stays owned by root (read-only for the app); only var/ is writable, and
# var/beat is where docker-compose.yml mounts the Celery beat schedule volume.
COPY . .
# Static files (admin, plotly.js) collected with hashed names for WhiteNoise. The settings
# refuse prod without these variables, so this one command gets placeholders that exist
# only while it runs; the real values come from the environment at run time.
RUN OASIS_ENV=prod SECRET_KEY=collectstatic-placeholder-not-used-at-run-time-0123456789 \
        REDIS_URL=redis://placeholder:6379/0 ALLOWED_HOSTS=placeholder \
        python manage.py collectstatic --no-input --verbosity 0 \
    && mkdir -p /app/var/beat && chown -R oasis:oasis /app/var

USER oasis

EXPOSE 8000

# Liveness only (/healthz touches no dependency). The Host header is the first entry of
# ALLOWED_HOSTS, because prod rejects any other host (127.0.0.1 included) with a 400.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; hosts = [h.strip().lstrip('.') for h in os.environ.get('ALLOWED_HOSTS', '').split(',') if h.strip() not in ('', '*')]; u.urlopen(u.Request('http://127.0.0.1:%s/healthz' % os.environ.get('OASIS_PORT', '8000'), headers={'Host': (hosts or ['localhost'])[0]}), timeout=5)"]

CMD ["python", "manage.py", "serve"]
