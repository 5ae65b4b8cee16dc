# The one image behind every mailer service in docker-compose.yml (migrate, web, worker, beat).
#
#   docker build -t mailer .
#   docker run --rm mailer --help
#   docker run --rm -p 8000:8000 mailer run --host 0.0.0.0    # the embedded default, in one container
#
# The engine goes into /app/.venv from uv.lock; the site (mailer.toml, sequences/, templates/) is
# copied to /srv/mailer, which is MAILER_HOME: mount your own site over it, e.g.
#   -v ./site/mailer.toml:/srv/mailer/mailer.toml:ro -v ./site/sequences:/srv/mailer/sequences:ro ...
FROM python:3.12-slim

ARG UV_VERSION=0.13.9

# UV_PYTHON_DOWNLOADS=never: use this image's Python, never fetch one. UV_COMPILE_BYTECODE: the .pyc
# files are written once here, not by every container at its first start.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_PROJECT_ENVIRONMENT=/app/.venv

RUN pip install "uv==${UV_VERSION}"

WORKDIR /app

# Dependencies first, in a layer of their own: editing the engine's code does not reinstall them.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project

# Then the engine itself, installed as a wheel (not editable): /app holds no source at run time
# that could drift from what was installed. README.md is the package's readme (pyproject.toml).
COPY README.md ./
COPY mailer ./mailer
RUN uv sync --frozen --no-dev --no-editable \
    && rm -rf /app/mailer

# A user of its own: the engine needs no privilege, and a compromised process owns nothing else.
RUN groupadd --system --gid 10001 mailer \
    && useradd --system --uid 10001 --gid mailer --home-dir /srv/mailer --no-create-home \
        --shell /usr/sbin/nologin mailer

# The site is content: its files are root's, and the engine only reads them. What the engine writes
# lives beside them in /srv/mailer, which is its own: instance/ (the generated secret key, the
# embedded broker), outbox/ (MAILER_SMTP_URL=maildir:./outbox) and, on the embedded default, mailer.db.
COPY mailer.toml /srv/mailer/mailer.toml
COPY sequences /srv/mailer/sequences
COPY templates /srv/mailer/templates
RUN mkdir -p /srv/mailer/instance /srv/mailer/outbox \
    && chown mailer:mailer /srv/mailer /srv/mailer/instance /srv/mailer/outbox

ENV PATH="/app/.venv/bin:${PATH}" \
    MAILER_HOME=/srv/mailer

WORKDIR /srv/mailer
# Numeric, so that a runtime that refuses root (runAsNonRoot) can tell without the image's passwd.
USER 10001:10001
EXPOSE 8000

# `docker run IMAGE web --host 0.0.0.0` runs `mailer web --host 0.0.0.0`; every subcommand has --help.
ENTRYPOINT ["mailer"]
CMD ["--help"]
