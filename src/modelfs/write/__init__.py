"""The write side: the `Writer` protocol and its null object, and write-back (staging files,
journal, upload queue, uploader)."""
