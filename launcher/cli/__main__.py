"""`python -m launcher.cli ...`: what the sbatch script and the sweep run (the same as `launcher ...`)."""

from launcher.cli import main

main()
