"""Links that never expire: `presign` (signed links, locally) and `serve` (a link service
whose stable links answer with freshly signed ones; keys stay in its process)."""
