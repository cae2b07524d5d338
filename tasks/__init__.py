"""modelmake build stages: each module holds one stage or one piece of build logic.

Modules imported by dodo.py at task-definition time must stay light (no torch,
transformers or numpy at import), because doit loads dodo.py on every call.
"""
