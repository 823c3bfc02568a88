"""Feature store: embeddings on disk as float32 ``.npy`` shards + an id index + a manifest.

``write_store``/``StoreWriter`` write one (atomically, shard by shard, resumable, from any
number of processes); ``open_store`` reads one: ``lookup(ids)`` from memory maps without
loading the store, ``chunks()`` for ``revision fit``. Layout: ``revision_plugin.store.layout``.
"""

from revision_plugin.store.finalize import finalize_store
from revision_plugin.store.reader import FeatureStore, StoreRows, open_store
from revision_plugin.store.writer import DEFAULT_SHARD_ROWS, StoreWriter, write_store

__all__ = [
    "DEFAULT_SHARD_ROWS",
    "FeatureStore",
    "StoreRows",
    "StoreWriter",
    "finalize_store",
    "open_store",
    "write_store",
]
