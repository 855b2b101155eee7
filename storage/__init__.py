"""Persistence for HOMER Chat: the SQLite index, cache files on disk and sharing bundles.

from storage import Store
store = Store()                      # under homer_home() / "store", or Store(path)
"""

from .errors import BundleError, CacheCorrupt, StoreError
from .store import Store

__all__ = ["BundleError", "CacheCorrupt", "Store", "StoreError"]
