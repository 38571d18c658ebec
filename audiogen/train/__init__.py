"""Training: the shared Accelerate loop, the LM and codec trainers, FSDP, and training curves."""
