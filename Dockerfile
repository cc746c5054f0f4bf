# syntax=docker/dockerfile:1
# mlops-backend: the gateway under gunicorn with gevent workers, as a non-root user.

# ReDoc's standalone bundle comes from its npm package, so /redoc works with no internet.
FROM node:20-slim AS assets
WORKDIR /assets
RUN npm pack --silent redoc@2.5.4 && tar xzf redoc-2.5.4.tgz

# Dependencies go into a virtualenv that the runtime stage copies whole.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install -r /tmp/requirements.txt

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    DATABASE_URL=sqlite:////data/usage.db
# /data holds the usage database (and a keys file, if API_KEYS_FILE points there): mount a volume.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway \
    && mkdir /data && chown gateway /data
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY mlops_backend/ mlops_backend/
COPY wsgi.py gunicorn.conf.py ./
COPY --from=assets /assets/package/bundles/redoc.standalone.js mlops_backend/static/redoc/
USER gateway
VOLUME /data
EXPOSE 8000
# Liveness only (never calls Ollama), so a slow model load does not mark the gateway unhealthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=3)"]
# Config comes from the environment (docker run -e / compose); API_KEY is required while auth is on.
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
