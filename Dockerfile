# syntax=docker/dockerfile:1
# Nexus manager image: controllers + REST API. Multi-stage, non-root, read-only-root friendly.
# BASE_IMAGE: any image with CPython 3.12 on PATH as python3, plus groupadd/useradd (Debian);
# hack/cluster.sh passes a locally built one on machines that reach no registry.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY nexus ./nexus
RUN python3 -m venv /opt/nexus \
 && /opt/nexus/bin/pip install --upgrade pip \
 && /opt/nexus/bin/pip install .

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="nexus" \
      org.opencontainers.image.description="Multi-tenant control plane for Astromesh agents"
ENV PATH=/opt/nexus/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/nexus /opt/nexus
# 65532 is the conventional "nonroot" uid of distroless images, as kubebuilder uses.
RUN groupadd --gid 65532 nonroot && useradd --uid 65532 --gid 65532 --no-create-home nonroot \
 && mkdir -p /data && chown 65532:65532 /data
USER 65532:65532
VOLUME ["/data"]
EXPOSE 8080 8081 9090
ENTRYPOINT ["nexus"]
CMD ["manager", "--database=/data/nexus.db"]
