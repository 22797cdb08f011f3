"""Models onto local disk without a mount: `pull`, `manifest create`, `verify`, with the
mount's read engine, sources with fallback, and manifests of sizes and sha256."""
