"""Pure functions from API values to row values, shared by the streams (no I/O)."""
