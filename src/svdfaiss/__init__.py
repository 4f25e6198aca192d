"""svdfaiss: SVD embeddings of an interaction log, served from persisted FAISS indexes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("svdfaiss")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

from svdfaiss.errors import (
    InvalidBundle,
    InvalidInput,
    NoBundle,
    SvdfaissError,
    UnknownItem,
    UnknownItems,
    UnknownUser,
)

__all__ = [
    "InvalidBundle",
    "InvalidInput",
    "NoBundle",
    "SvdfaissError",
    "UnknownItem",
    "UnknownItems",
    "UnknownUser",
    "__version__",
]
