"""The read-through of a use case: decisions written once, and the drivers that do their I/O.

See ARCHITECTURE.md for the life of a call through these modules.
"""

from gcache.readthrough.decisions import Miss
from gcache.readthrough.runtime import REFRESH, Runtime
from gcache.readthrough.usecase import UseCase

__all__ = ["REFRESH", "Miss", "Runtime", "UseCase"]
