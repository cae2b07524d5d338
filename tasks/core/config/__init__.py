"""models.toml: its schema (schema.py), its loader (load.py) and the readers of each section."""
