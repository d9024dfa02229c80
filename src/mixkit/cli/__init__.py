from mixkit.cli.app import main

__all__ = ["main"]
