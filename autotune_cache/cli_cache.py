"""CLI commands that read or maintain a cache directory: inspect, verify, prune, export, import, merge."""


def add_commands(sub) -> None:
    pass
