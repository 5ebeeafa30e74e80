# ganserve serving image: ONNX Runtime (CUDA EP when a GPU is present, CPU otherwise),
# gRPC and Prometheus. No torch: training is not part of the serving image.
#
#   docker build -t ganserve .                                              # GPU-capable
#   docker build --build-arg ONNXRUNTIME=onnxruntime -t ganserve:cpu .      # CPU only
#   docker run --gpus all -p 50051:50051 -p 8000:8000 ganserve        # GPU
#   docker run -p 50051:50051 -p 8000:8000 ganserve                   # CPU fallback
#
# BASE_IMAGE must provide `python` (3.10+) with the venv module, and useradd; both
# stages use it, since the venv links to the base's interpreter. make image-test
# builds one from Debian packages (deploy/image/). See docs/image.md.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# The ONNX Runtime package, any pip requirement: onnxruntime-gpu's [cuda,cudnn] extras
# bring the CUDA and cuDNN runtime libraries as wheels (no CUDA base image needed, but
# ~2.4 GB of the image); "onnxruntime" makes a CPU-only image without them.
ARG ONNXRUNTIME="onnxruntime-gpu[cuda,cudnn]"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/ganserve
COPY pyproject.toml README.md ./
COPY ganserve ganserve
COPY server server
COPY clients clients
COPY training training
COPY protos protos
# [server-core] is [server] without its ONNX Runtime ([otlp]: traces to a collector when
# OTEL_TRACES_EXPORTER=otlp); one resolve for all, so the
# ORT package chosen above is the only one installed.
RUN /opt/ganserve/bin/pip install --upgrade pip \
 && /opt/ganserve/bin/pip install ".[server-core,otlp]" "${ONNXRUNTIME}"

FROM ${BASE_IMAGE}
# The image's version label; make image-test passes the package's version.
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="ganserve" \
      org.opencontainers.image.description="gRPC serving of GAN generators on ONNX Runtime" \
      org.opencontainers.image.version="${VERSION}"
RUN useradd --system --uid 10001 --home /srv/ganserve ganserve
COPY --from=build /opt/ganserve /opt/ganserve
COPY --chown=ganserve models /srv/ganserve/models
ENV PATH=/opt/ganserve/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GANSERVE_HOST=0.0.0.0 \
    GANSERVE_PORT=50051 \
    GANSERVE_METRICS_PORT=8000 \
    GANSERVE_HTTP_PORT=8080 \
    GANSERVE_MODEL_DIR=/srv/ganserve/models \
    GANSERVE_DEVICE=auto
USER 10001
WORKDIR /srv/ganserve
EXPOSE 50051 8000 8080
# Kubernetes probes use the gRPC health service (see deploy/); SIGTERM drains in-flight work.
STOPSIGNAL SIGTERM
ENTRYPOINT ["ganserve", "serve"]
