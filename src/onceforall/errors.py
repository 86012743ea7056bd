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


class LatencyTableError(OFAError):
    """A latency table is malformed, incomplete, or was measured on another backend or device."""


class PredictorError(OFAError):
    """An accuracy predictor or dataset does not fit the space it is used with."""


class SearchError(OFAError):
    """A search cannot run as asked (e.g. no subnet meets the budget)."""


class ExportError(OFAError):
    """An exported model does not reproduce the PyTorch model."""
