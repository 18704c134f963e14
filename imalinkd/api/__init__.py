"""The HTTP API: the seed's endpoints on live storage, import control, live progress
(server-sent events) and Prometheus metrics. ``imalinkd run`` serves it on ``[api] listen``.
See docs/api.md."""

from imalinkd.api.app import create_app
from imalinkd.api.hub import ProgressHub
from imalinkd.api.server import ApiServer, start_api_server

__all__ = ["ApiServer", "ProgressHub", "create_app", "start_api_server"]
