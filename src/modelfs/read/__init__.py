"""The read side: the block fetcher, readahead, whole-object fetches, per-handle readers,
drop-behind, and the read policy that decides what is fetched when."""
