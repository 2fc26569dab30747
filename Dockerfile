# syntax=docker/dockerfile:1
#
# One image for every aicloud service. The entrypoint is `python -m`, so the command picks the
# service:
#
#   docker build -t aicloud:local .
#   docker run --rm -p 8000:8000 -e AICLOUD_CATALOG_HTTP_HOST=0.0.0.0 ... aicloud:local services.catalog
#
# docker-compose.yml and the Helm chart (deploy/helm/aicloud) pass `services.<module>` the same way.

# The base is pinned by digest so a rebuild gets the same bytes: python:3.11-slim's multi-arch index
# (Python 3.11.17 on Debian 13 "trixie"). The tag in front of the digest is for humans; Docker
# pulls by the digest alone. To move to a newer base, take the index digest of the new tag
# (`docker buildx imagetools inspect python:3.11-slim`) and replace it here, in one change;
# tests/unit/test_deploy_files.py refuses a default without a digest.
ARG PYTHON_IMAGE=python:3.11-slim@sha256:0dd364ba7e10242f07755449e3a3d0e35f9efd987952737b90def6709ab0c5ce

# --- build: install the project and its dependencies into a self-contained virtualenv ----------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/aicloud
ENV PATH=/opt/aicloud/bin:$PATH

WORKDIR /src
# Metadata first, then the packages named in [tool.setuptools.packages.find].
COPY pyproject.toml README.md ./
COPY aicloud ./aicloud
COPY contracts ./contracts
COPY guardrails ./guardrails
COPY services ./services
COPY workflows ./workflows
RUN pip install . \
 && python -m compileall -q /opt/aicloud/lib

# --- runtime: the virtualenv and nothing else, run as an unprivileged user ---------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG AICLOUD_UID=10001
ARG AICLOUD_GID=10001

LABEL org.opencontainers.image.title="aicloud" \
      org.opencontainers.image.description="aicloud platform services (catalog, quota, provisioner, cost-ledger, inference-router, agent-runtime, observability-collector)"

RUN groupadd --system --gid "${AICLOUD_GID}" aicloud \
 && useradd --system --uid "${AICLOUD_UID}" --gid aicloud --home-dir /home/aicloud \
      --create-home --shell /usr/sbin/nologin aicloud \
 && mkdir -p /var/lib/aicloud \
 && chown aicloud:aicloud /var/lib/aicloud

COPY --from=build /opt/aicloud /opt/aicloud
# Guardrails as code: the Cedar policies and the catalog data (products, org) they decide with.
COPY policies /opt/aicloud/policies

ENV PATH=/opt/aicloud/bin:$PATH \
    AICLOUD_QUOTA_POLICY_DIR=/opt/aicloud/policies \
    AICLOUD_CATALOG_POLICY_DIR=/opt/aicloud/policies \
    AICLOUD_ROUTER_CONFIG=/opt/aicloud/policies/routes.yaml \
    AICLOUD_INFERENCE_ROUTER_PRICE_BOOK=/opt/aicloud/policies/pricebook.yaml \
    AICLOUD_INFERENCE_ROUTER_ORG_FILE=/opt/aicloud/policies/org.yaml \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/aicloud

# Writable state (e.g. the provisioner's job workspaces) lives here: mount a volume over it when
# the root filesystem is read-only (compose and the Helm chart do).
WORKDIR /var/lib/aicloud

USER ${AICLOUD_UID}:${AICLOUD_GID}

# catalog 8000, quota 8001, provisioner 8002, cost-ledger 8003, inference-router 8004,
# agent-runtime 8005, observability-collector 8006
EXPOSE 8000 8001 8002 8003 8004 8005 8006

ENTRYPOINT ["python", "-m"]
CMD ["services.catalog"]
