"""mlops-backend: an authenticated Flask gateway in front of an Ollama server."""

__version__ = "0.1.0"
__all__ = ["__version__", "create_app", "init_gateway"]


def __getattr__(name):
    # Imported lazily so gunicorn.conf.py can read the config in the master without importing
    # requests (and ssl) before the gevent worker monkey-patches them.
    if name in ("create_app", "init_gateway"):
        from . import factory

        return getattr(factory, name)
    raise AttributeError(name)
