"""Slurm: sbatch scripts, job control and requeue decisions, all through Slurm's own commands."""
