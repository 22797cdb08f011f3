"""`modelfs run` (an app on a mount, healed and watched), systemd units and the fstab helper."""
