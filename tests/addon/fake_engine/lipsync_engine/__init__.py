"""A fake engine for the add-on's tests: same command line and protocol, scripted behaviour."""
