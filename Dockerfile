# ganserve serving image: ONNX Runtime (CUDA EP when a GPU is present, CPU otherwise),
# gRPC and Prometheus. No torch: training is not part of the serving image.
#
#   docker build -t ganserve .
#   docker run --gpus all -p 50051:50051 -p 8000:8000 ganserve        # GPU
#   docker run -p 50051:50051 -p 8000:8000 ganserve                   # CPU fallback
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/ganserve
COPY pyproject.toml README.md ./
COPY ganserve ganserve
COPY server server
COPY clients clients
COPY training training
COPY protos protos
# [server] brings onnxruntime-gpu; its [cuda,cudnn] extras bring the CUDA 12 and cuDNN
# runtime libraries as wheels, so the image needs no CUDA base image.
RUN /opt/ganserve/bin/pip install --upgrade pip \
 && /opt/ganserve/bin/pip install ".[server]" \
 && /opt/ganserve/bin/pip install "onnxruntime-gpu[cuda,cudnn]"

FROM python:${PYTHON_VERSION}-slim
LABEL org.opencontainers.image.title="ganserve" \
      org.opencontainers.image.description="gRPC serving of GAN generators on ONNX Runtime"
RUN useradd --system --uid 10001 --home /srv/ganserve ganserve
COPY --from=build /opt/ganserve /opt/ganserve
COPY --chown=ganserve models /srv/ganserve/models
ENV PATH=/opt/ganserve/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GANSERVE_HOST=0.0.0.0 \
    GANSERVE_PORT=50051 \
    GANSERVE_METRICS_PORT=8000 \
    GANSERVE_MODEL_DIR=/srv/ganserve/models \
    GANSERVE_DEVICE=auto
USER 10001
WORKDIR /srv/ganserve
EXPOSE 50051 8000
# Kubernetes probes use the gRPC health service (see deploy/); SIGTERM drains in-flight work.
STOPSIGNAL SIGTERM
ENTRYPOINT ["ganserve", "serve"]
