"""Training: the config's checks, the train state and steps, the loop, checkpoints, workdirs."""
