"""The library's own errors: each says what is wrong and what is expected."""


class OFAError(ValueError):
    """Base class of every error onceforall raises on bad input."""


class ArchError(OFAError):
    """An architecture (or population) does not fit its search space."""


class CheckpointError(OFAError):
    """A checkpoint or state dict does not fit the network it is loaded into."""


class DataError(OFAError):
    """A dataset is missing, malformed, or does not fit the model."""


class ConfigError(OFAError):
    """A configuration file or value is malformed."""
