"""`resnetkit serve`: an HTTP API over a weights file (FastAPI + uvicorn), with dynamic batching, limits
that answer in one JSON line, Prometheus metrics, and a web page at `/` served by the server itself.

>>> from resnetkit.serve import ServeConfig, create_app, run
>>> app = create_app(ServeConfig("runs/demo/model.safetensors", backend="channels_last"))
>>> run(ServeConfig("runs/demo/model.safetensors"), host="127.0.0.1", port=8000)
"""

from resnetkit.serve.app import LOOPBACK, TOKEN_ENV, ServeConfig, check_bind, create_app, resolve_token, run

__all__ = ["LOOPBACK", "TOKEN_ENV", "ServeConfig", "check_bind", "create_app", "resolve_token", "run"]
