"""The host: mountinfo and dead mounts, health probes, directory locks, the control channel,
sd_notify."""
