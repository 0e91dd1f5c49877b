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


def torch_load_reason(exc: BaseException) -> str:
    """One line out of `torch.load`'s multi-paragraph errors (weights-only loading): the unpickler's own complaint
    when there is one, never torch's advice to load the file unsafely."""
    text = " ".join(str(exc).split())
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].split(" Please use", 1)[0].split(" Check the documentation", 1)[0]
    elif "weights_only" in text:
        text = "not a file torch can read with weights only"
    return f"{type(exc).__name__}: {text.strip()[:200]}"
