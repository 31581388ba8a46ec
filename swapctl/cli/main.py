"""`python -m swapctl.cli.main`: the swapctl command without the console script."""

from swapctl.cli import main

main()
