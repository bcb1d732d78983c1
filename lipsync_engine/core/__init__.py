"""The base every stage stands on: errors, progress and cancellation, atomic file storage, worker
pools, the stdout message protocol and exit codes, the version. Imports nothing else of the engine."""
