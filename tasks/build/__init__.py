"""Wiring: the stage registry, doit task dicts, the stage runner, models.lock and the run summary.

The only package that imports the feature packages; dodo.py imports only this one (and core).
"""
