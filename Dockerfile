# The Vigil image for docker-compose.yml: one image runs `vigil worker` (default) and
# `vigil fake-llm`. Only the packaged code goes in (schemas, streams, agents); tests and ops
# stay out. Built and run only where Docker exists (not on our CI machines).
FROM python:3.11-slim

# litellm fetches a remote model-cost map at import and retries for seconds without network.
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    VIGIL_DATA_DIR=/var/lib/vigil/data

WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY streams ./streams
COPY agents ./agents
RUN pip install . \
    && useradd --system --home-dir /var/lib/vigil --create-home vigil \
    && mkdir -p /var/lib/vigil/data \
    && chown -R vigil:vigil /var/lib/vigil

USER vigil
WORKDIR /var/lib/vigil
CMD ["vigil", "worker"]
