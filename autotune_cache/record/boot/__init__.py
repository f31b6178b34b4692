"""The start-up hook of `autotune-cache record` (sitecustomize.py): this folder goes first on PYTHONPATH."""
