"""`python -m largebatch ...` is the `largebatch` command."""
from .tools.cli import main

main()
