"""The filesystem core: inodes, attributes, listings and the staged overlay; it delegates reads
to `read` and changes to `write`, and never imports pyfuse3."""
