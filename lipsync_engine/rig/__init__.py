"""The ARKit rig: the 52 names, presets onto other rigs, and fitting blendshape coefficients
to a speaker's meshes."""
