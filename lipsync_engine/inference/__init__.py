"""A trained model applied to new audio: the predictor, the prediction folder it writes, and
rendering of predicted meshes and atlases. Never imports the trainer."""
