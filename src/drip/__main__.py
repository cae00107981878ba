"""`python -m drip` runs the CLI, like the `drip` console script."""

from drip.cli import main

main()
