# The ingester image: `flowlog run` against a ClickHouse server (no embedded engine: the
# `embedded` extra, chdb, is for the demo and the tests).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY ingest ./ingest
COPY sql ./sql
RUN pip install . && rm -rf /src

# A fixed UID, so the DaemonSet's runAsUser and the state directory's owner agree with it.
RUN groupadd --system --gid 10001 flowlog \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin flowlog
USER 10001:10001
WORKDIR /var/lib/flowlog

EXPOSE 9970
ENTRYPOINT ["flowlog"]
CMD ["run", "--config", "/etc/flowlog/config.yaml"]
