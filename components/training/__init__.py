"""Distributed training with parameter servers (torch.distributed.rpc): see components.training.local and worker."""

# Set by `python -m pipelines run` on a terminal, read by the training step (components.training.local): here, so the
# CLI names it without importing the training code (and torch) in a process that only supervises.
PROGRESS_TTY_ENV = "KFP_PS_PROGRESS_TTY"
