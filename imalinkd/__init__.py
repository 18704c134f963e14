"""imalinkd: a photo-ingest daemon that copies, verifies and catalogues camera cards into a
permanent, portable archive."""

__version__ = "0.1.0"
