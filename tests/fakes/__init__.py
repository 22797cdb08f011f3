"""In-memory stand-ins for the store and the data cache, for unit tests of logic."""
