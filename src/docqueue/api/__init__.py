"""The HTTP API: `create_app(settings)` builds it; routes/ holds one router per resource."""

from docqueue.api.app import create_app

__all__ = ["create_app"]
