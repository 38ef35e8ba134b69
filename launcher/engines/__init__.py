"""Engines execute a LaunchPlan. They start existing tools (torchrun, ssh, srun); nothing more."""
