"""The network (which knows nothing of training), the model-folder checkpoint (save, load, device;
no trainer), the losses, and the trainer."""
