"""Subcommand module (being written)."""


def register(app) -> None:
    return None
