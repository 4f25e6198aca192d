"""The HTTP front end: FastAPI app over one immutable Recommender, swapped on reload."""

from svdfaiss.service.app import create_app

__all__ = ["create_app"]
