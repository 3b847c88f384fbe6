"""ultravox-etl: sync Ultravox scheduled call batches into SQL tables for reporting."""

__version__ = "0.1.0"
