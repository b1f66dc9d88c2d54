"""Serving zoo exports over HTTP with TensorFlow Serving's REST API (`zoo serve`): see `serving.server`."""

from serving.server import make_app, make_server, serve  # noqa: F401
