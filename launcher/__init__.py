"""launcher: one recipe file -> a distributed training job (torchrun, Slurm, pdsh/ssh).

Importing this package must stay cheap: no torch, no deepspeed, no wandb at module level.
"""

__version__ = "0.1.0"
