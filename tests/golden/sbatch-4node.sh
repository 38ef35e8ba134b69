#!/bin/bash
# Written by `launcher submit` for /work/recipes/bert-base-pretrain.yaml.
# Slurm re-runs this same script on requeue; the run directory is fixed, so the job resumes.
#SBATCH --job-name=bert-base
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=2-00:00:00
#SBATCH --partition=gpu
#SBATCH --account=ml-team
#SBATCH --output=/scratch/runs/bert-base/slurm/%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@120
#SBATCH --requeue

set -eu
cd /work
export LAUNCHER_SLURM_SIGNAL_LEAD=120
exec /venv/bin/python -m launcher.cli run /work/recipes/bert-base-pretrain.yaml --run-dir /scratch/runs/bert-base --nodes 4 --nproc 8 -- optimizer.lr=1e-4 tracking.mode=online
