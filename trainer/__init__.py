"""edge-asd trainer (desktop): datasets, protocols, models, int8 export, evaluation."""

import os as _os


def quiet_tensorflow_logs() -> None:
    """Hide TensorFlow's C++ log below fatal, unless the user set ``TF_CPP_MIN_LOG_LEVEL``.

    Call before TensorFlow is imported. Level 3, not 2: the ``tensorflow`` wheel logs a failed CUDA
    init as an error on every CPU-only machine; real failures still surface as Python exceptions.
    """
    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
