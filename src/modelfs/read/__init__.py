"""The read side: the block fetcher, readahead, whole-object fetches, per-handle readers,
the kernel's page cache (filled ahead, dropped behind), and the read policy that decides what is
fetched when."""
