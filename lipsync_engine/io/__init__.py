"""Files in and out that are no stage's own format: video/audio decoding, the one MP4 writer,
the PC2/OBJ point cache, and the interchange exports (Live Link CSV, Rhubarb JSON, coefficients)."""
