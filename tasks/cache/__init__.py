"""Shared, content-addressed stage cache (Bazel remote cache / DVC remotes and run-cache).

A cache holds, per stage key, the stage's manifest ("entry") and, per output digest, the output's
bytes ("blob"):

    <root>/entries/<key[:2]>/<key>.json     the stage manifest, uploaded last
    <root>/blobs/<sha[:2]>/<sha256>         one output file, named by its own digest
    <root>/tmp/                             uploads in progress (renamed into place when complete)

Blobs named by their digest make two pushers of the same key harmless (they write the same bytes)
and deduplicate across stages; the entry is written last, so a reader that finds it finds every
blob it names, and verifies each one's SHA256 anyway before anything is renamed into artifacts/.
This layer sits between tasks.build (which calls it around each stage) and the feature packages
(it reuses the SSH source's connection code).
"""
