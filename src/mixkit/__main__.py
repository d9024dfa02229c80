"""`python -m mixkit ...` (and `torchrun ... -m mixkit train ...`) runs the CLI."""

from mixkit.cli import main

main()
