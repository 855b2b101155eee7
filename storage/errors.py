"""The errors the store raises. Every message is one line a user can read."""


class StoreError(Exception):
    """Something the store cannot do (missing document, unknown cache, …)."""


class CacheCorrupt(StoreError):
    """A cache file is missing, truncated, altered or made by another model; its row has
    been marked for rebuild."""


class BundleError(StoreError):
    """A sharing bundle was refused; nothing was written to the store."""


class CacheExists(StoreError):
    """A cache of that key is already stored; it was left exactly as it was."""


def one_line(exc: BaseException) -> str:
    """An exception's message on one line, at most 300 characters (for a report)."""
    return " ".join(str(exc).split())[:300]
