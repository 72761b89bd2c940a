"""The command-line interface: `unetcli COMMAND ...`. Importing this package registers every command on `app`."""

from . import audit, calibrate, demo, evaluate, model, plan, predict, train  # noqa: F401 - each module registers its commands
from .app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
