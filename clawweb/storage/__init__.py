"""What clawweb keeps, in SQLite (the default) or PostgreSQL: ``Store`` (store.py) over one of two engines
(engine.py's interface; sqlite.py, postgres.py), their schema in one place (migrations.py)."""

from .errors import Duplicate, StorageUnavailable
from .short_terms import SEPARATOR, spaced
from .store import CONVERSATION_PAGE, FIGURES, INTERRUPTED, Store, open_store

__all__ = [
    "CONVERSATION_PAGE",
    "FIGURES",
    "INTERRUPTED",
    "SEPARATOR",
    "Duplicate",
    "StorageUnavailable",
    "Store",
    "open_store",
    "spaced",
]
