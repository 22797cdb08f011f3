"""modelfs: mount an S3 bucket prefix of AI model files as a local directory."""

__version__ = "0.1.0"
