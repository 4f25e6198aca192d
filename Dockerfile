# svdfaiss: one image for both programs (`svdfaiss build` and `svdfaiss serve`), and for
# `svdfaiss synth`, so the compose quick start needs nothing but Docker on the host.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
WORKDIR /app
# The dependencies first, read from pyproject.toml (their one source), in a layer of their
# own: a change to the source reinstalls only svdfaiss, not numpy, FAISS and the rest.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && pip install -r requirements.txt
COPY README.md ./
COPY src ./src
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --home-dir /app svdfaiss \
    && mkdir /indexes /data /events /sample \
    && chown svdfaiss /indexes /events /sample
# A new named volume mounted on /indexes, /events or /sample starts with this folder's
# owner, so the unprivileged builder can write bundles, the api its events log, and synth
# the sample shop.
USER svdfaiss

ENV SVDFAISS_INDEX_DIR=/indexes SVDFAISS_HOST=0.0.0.0 SVDFAISS_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]
ENTRYPOINT ["svdfaiss"]
CMD ["serve"]
