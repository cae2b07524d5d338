"""Remote sources of adapters and base models: SSH hosts (rsync/scp) and the Hugging Face Hub.

`spec` parses the models.toml forms (light: dodo.py loads it on every call); `ssh` and `hub`
fetch into a hidden staging directory and run only inside the `fetch:<model>-<role>` stage.
"""
