"""The built-in demo: a synthetic talking-face video with known truth, and synthetic speech."""
