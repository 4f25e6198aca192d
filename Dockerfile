# svdfaiss: one image for both programs (`svdfaiss build` and `svdfaiss serve`).
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /app svdfaiss \
    && mkdir /indexes /data /events \
    && chown svdfaiss /indexes /events
# A new named volume mounted on /indexes or /events starts with this folder's owner, so the
# unprivileged builder can write bundles, and the api its events log.
USER svdfaiss

ENV SVDFAISS_INDEX_DIR=/indexes SVDFAISS_HOST=0.0.0.0 SVDFAISS_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]
ENTRYPOINT ["svdfaiss"]
CMD ["serve"]
