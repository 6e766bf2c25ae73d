"""Lightning glue shared by every method: callbacks writing the run directory, loggers, trainer."""
