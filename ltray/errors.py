"""User-facing errors: one line, non-zero exit, nothing overwritten."""


class LtrayError(Exception):
    """An error caused by user input (config, paths, files). The CLI prints `ltray: error: <message>` and exits 2."""


class ConfigError(LtrayError):
    """An invalid or inconsistent configuration value."""


class DataError(LtrayError):
    """A missing, corrupt or inconsistent data file (split list, image root, pool, labels)."""


class CheckpointError(LtrayError):
    """A missing, corrupt or incompatible checkpoint."""


class TrainingDiverged(LtrayError):
    """The loss became NaN or infinite."""
