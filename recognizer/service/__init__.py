"""The recognition service: an HTTP API and a web app over one gallery (``tools/serve.py``).

``app`` builds the FastAPI application (routes, JSON errors, the web pages shipped in
``web/``); ``core`` holds the gallery, its model and the locks, and runs enrolment, removal
and the live camera; ``batching`` embeds concurrent match requests together;
``security`` has the bearer token, item-id rules and the upload size limit; ``metrics``
the Prometheus counters; ``uploads`` turns uploaded bytes into images with the image
loader's checks. Matching goes through :class:`recognizer.matching.pipeline.Recognizer`,
the one recognition path the tools use.
"""

from .app import create_app, serve
from .config import ServiceConfig

__all__ = ["ServiceConfig", "create_app", "serve"]
