"""Text conditioning: the frozen text encoder of a run (load, cache or pretrain), DAMSM pretraining and its
image encoders, and probes of what a text encoder encodes. Below both training and metrics."""
