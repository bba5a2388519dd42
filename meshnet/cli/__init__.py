"""The `meshnet` command (a front-end: it talks to the router through its API, and starts
it with `launch`). `main(argv) -> exit code` lives in `main.py`."""

from meshnet.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
