"""The block cache: fetched blocks of object versions kept on disk, verified, bounded (LRU)."""
