"""The project's error hierarchy.

Every error a user can cause by ordinary mistakes (a bad file, a wrong bundle, an unplugged
microphone) is an :class:`EdgeASDError`; the CLIs print its message and exit non-zero without a
traceback. Anything else is a bug and keeps its traceback.
"""


class EdgeASDError(Exception):
    """Base of every expected, user-facing error."""


class ParameterError(EdgeASDError, ValueError):
    """A parameter or configuration value is out of range or inconsistent."""


class AudioFileError(EdgeASDError):
    """A wav file cannot be read, or its content is unusable (truncated, NaN, wrong format)."""


class AudioDeviceError(EdgeASDError):
    """A capture device is missing, out of range, or stopped delivering audio."""


class BundleError(EdgeASDError):
    """A model bundle is missing, corrupt, of an unknown schema, or does not match the front end."""


class ConfigError(EdgeASDError):
    """A device configuration file is missing or invalid; the message names the key."""


class RuntimeUnavailableError(EdgeASDError):
    """No TFLite runtime can be imported, or the one found cannot work in this environment."""


class DatasetError(EdgeASDError):
    """A dataset folder has no usable layout, no wav files, or unreadable entries."""


class SignalQualityError(EdgeASDError):
    """Audio is unusable as a reference of normal sound (silent, flat-lined or clipped)."""
