"""One mount's life: the FUSE adapter, building and serving the mount, preflight, `--daemon`,
the control server, the mount-time warm-up, and the commands that talk to a mount."""
