"""Meta-learning: train state, the jitted step, sharding, checkpoints and the loop."""
