"""Applications built on predictions: dubbing a video, blending a predicted face into frames,
cartoon drawings, and evaluation of a model against held-out takes (with its plots)."""
