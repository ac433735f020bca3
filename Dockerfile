# The control-plane image: `xds-server serve` (the xDS server), `xds-server webhook` (the
# sidecar injector) and, in every injected pod, the init steps `xds-server capture-init`
# (iptables, hence the package below) and `xds-server sidecar-bootstrap`.  The sidecar
# itself is the stock envoyproxy/envoy image.
#
#   docker build -t xds-server:0.1.0 .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /build
COPY pyproject.toml README.md ./
COPY xds_server ./xds_server
RUN pip install . && rm -rf /build

# A numeric UID, so the kubelet can enforce runAsNonRoot.  The capture init container
# overrides it with runAsUser 0 (plus NET_ADMIN and NET_RAW); the bootstrap init container
# runs as the proxy's UID 1337.
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin xds-server
USER 10001:10001
WORKDIR /

EXPOSE 15010 15014 15017
ENTRYPOINT ["xds-server"]
CMD ["--help"]
