"""Training: schedules, initialisation, dead-latent tracking and resampling, checkpoints, the loop."""
