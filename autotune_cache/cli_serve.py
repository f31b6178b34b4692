"""CLI commands for serving hosts: ensure."""


def add_commands(sub) -> None:
    pass
