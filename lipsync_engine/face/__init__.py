"""The face itself: the MediaPipe mesh topology and its data, geometry (pose, cylinder atlas
coordinates), mesh rasterization and warping, and MediaPipe tracking of video frames."""
