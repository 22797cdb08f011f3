"""Configuration: remotes and specs, the config file, the one mount-option table, units."""
