"""Training: the GAN step, the loop, checkpoints, distributed glue and text-encoder pretraining."""
