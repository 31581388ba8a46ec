"""`python -m swapctl`: the swapctl command without the console script."""

from swapctl.cli import main

main(prog_name="swapctl")
