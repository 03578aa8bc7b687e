# The scoring service: `docker build -t ae-anomaly .` then
#   docker run -p 8000:8000 -e MLFLOW_TRACKING_URI=http://mlflow:5000 \
#     -e ANOMALY_MODELS=models:/breast-cancer@champion -e ANOMALY_API_KEYS=change-me \
#     -v anomaly-cache:/var/cache/ae-anomaly ae-anomaly
# Every setting is an ANOMALY_* variable (see README, "Scoring service"); flags after the
# image name are passed to `anomaly serve` (e.g. `--model models:/other@champion`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# CPU build of torch first (its own layer, rarely rebuilt); the project's torch>=2.4 is then met.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md ./
COPY training ./training
COPY pipelines ./pipelines
COPY service ./service
RUN pip install . \
    && useradd --create-home --uid 10001 anomaly \
    && mkdir -p /var/cache/ae-anomaly \
    && chown anomaly:anomaly /var/cache/ae-anomaly

USER anomaly

# Inside the container the service must listen beyond loopback to be reachable at all.
ENV ANOMALY_HOST=0.0.0.0 \
    ANOMALY_PORT=8000 \
    ANOMALY_CACHE_DIR=/var/cache/ae-anomaly/models \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false

# Downloaded models and their ONNX graphs: kept across restarts, so a restart serves at once
# (confirming with the registry behind it) and still serves when the registry is down.
VOLUME ["/var/cache/ae-anomaly"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ANOMALY_PORT', '8000'), timeout=4)"]

ENTRYPOINT ["anomaly", "serve"]
