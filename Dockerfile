# syntax=docker/dockerfile:1
# imagegate: one image for every role (serve security | serve uploader | db upgrade | ...).

FROM python:3.11-slim AS build
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /app
ENV UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
# Dependencies first, so code changes do not invalidate their layer.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-dev --no-install-project
COPY src ./src
RUN uv sync --locked --no-dev --no-editable

FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --home-dir /data imagegate \
    && mkdir -p /data && chown imagegate:imagegate /data
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    IMAGEGATE_DATA_DIR=/data \
    IMAGEGATE_HOST=0.0.0.0 \
    IMAGEGATE_PORT=8000 \
    PYTHONUNBUFFERED=1
USER imagegate
WORKDIR /data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"]
ENTRYPOINT ["imagegate"]
CMD ["serve"]
