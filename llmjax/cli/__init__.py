"""Command-line entry points: each parses flags, validates, and calls into the library."""
