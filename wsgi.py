"""The WSGI entry point: `gunicorn -c gunicorn.conf.py wsgi:app`."""

from mlops_backend import create_app

app = create_app()
