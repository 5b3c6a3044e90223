"""Run lifecycle: compose -> build -> fit/test, run folders, resume, checkpoints, loggers, results."""
