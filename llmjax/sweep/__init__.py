"""Sweeps: expanding an experiment into runs, launching them, and reporting on them."""
