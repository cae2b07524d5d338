"""The build's foundations, standard library only: errors, the models.toml schema, the artifact layout,
the stage and manifest protocol, hashing, atomic writes, locks and the toolchain pin.

Every other package imports from here; nothing here imports from them.
"""
