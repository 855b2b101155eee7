"""HOMER Chat application layer: ingestion, the background build queue and its tasks, the
command line (and later the UI). Builds on ``homer`` (the method) and ``storage``."""
