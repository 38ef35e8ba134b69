#!/bin/bash
# Written by `launcher submit` for /work/recipes/bert-base-pretrain.yaml.
# Slurm re-runs this same script on requeue; the run directory is fixed, so the job resumes.
#SBATCH --job-name=bert-base
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=2-00:00:00
#SBATCH --partition=gpu
#SBATCH --account=ml-team
#SBATCH --output=/scratch/runs/bert-base/slurm/%A_%a.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@120
#SBATCH --no-requeue
#SBATCH --array=0-3
#SBATCH --qos=high

set -eu
cd /work
export LAUNCHER_SLURM_SIGNAL_LEAD=120
case "$SLURM_ARRAY_TASK_ID" in
  0) exec /venv/bin/python -m launcher.cli run /work/recipes/bert-base-pretrain.yaml --run-dir /scratch/runs/bert-base/task-0 --nodes 1 --nproc 8 -- optimizer.lr=1e-4 tracking.mode=online optimizer.lr=1e-4 batch.micro=16 ;;
  1) exec /venv/bin/python -m launcher.cli run /work/recipes/bert-base-pretrain.yaml --run-dir /scratch/runs/bert-base/task-1 --nodes 1 --nproc 8 -- optimizer.lr=1e-4 tracking.mode=online optimizer.lr=1e-4 batch.micro=32 ;;
  2) exec /venv/bin/python -m launcher.cli run /work/recipes/bert-base-pretrain.yaml --run-dir /scratch/runs/bert-base/task-2 --nodes 1 --nproc 8 -- optimizer.lr=1e-4 tracking.mode=online optimizer.lr=3e-4 batch.micro=16 ;;
  3) exec /venv/bin/python -m launcher.cli run /work/recipes/bert-base-pretrain.yaml --run-dir /scratch/runs/bert-base/task-3 --nodes 1 --nproc 8 -- optimizer.lr=1e-4 tracking.mode=online optimizer.lr=3e-4 batch.micro=32 ;;
  *) echo "launcher: unknown array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;
esac
