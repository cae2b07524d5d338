"""fetch:<model>-<role>: remote adapters and base models (SSH hosts via rsync/scp, the Hugging Face Hub).

models.toml's remote forms are parsed by tasks/core/config/remote.py; `ssh` and `hub` fetch into a
hidden staging directory (staging.py) and run only inside the fetch stage (fetch.py).
"""
