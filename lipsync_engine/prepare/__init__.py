"""Paper section 3.1, video to training data: the prepare pipeline, pose normalization,
lighting normalization, audio features, the speaker-folder format and the speaker report."""
