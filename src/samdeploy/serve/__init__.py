"""``samdeploy serve``: Segment Anything over HTTP (FastAPI), for many clients at once.

    from samdeploy.serve import ServeSettings, create_app
    app = create_app(ServeSettings(model="models/sam_vit_b", cache_mb=2048))   # an ASGI app

Each image is encoded once (uploads are keyed by content), kept in a byte-bounded cache, and
every later prompt is answered by the mask decoder alone. See docs/server.md. Needs the
``serve`` extra (fastapi, uvicorn, python-multipart, prometheus-client).
"""

from __future__ import annotations

from samdeploy.serve.app import create_app
from samdeploy.serve.settings import ServeSettings, SettingsError

__all__ = ["ServeSettings", "SettingsError", "create_app"]
