"""The TFLite runtime adapter: one small class over LiteRT, tflite_runtime or tensorflow.lite.

Only the runtime actually used is imported. Shapes, dtypes and quantisation parameters are read
from the interpreter, never assumed.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from edge_asd.scoring.bundle import QuantParams
from edge_asd.errors import BundleError, ParameterError, RuntimeUnavailableError

__all__ = ["RUNTIMES", "load_interpreter_class", "TFLiteModel"]

RUNTIMES = ("litert", "tflite_runtime", "tensorflow")
RuntimeName = Literal["auto", "litert", "tflite_runtime", "tensorflow"]


def _import_litert() -> Callable[..., Any]:
    return importlib.import_module("ai_edge_litert.interpreter").Interpreter


def _import_tflite_runtime() -> Callable[..., Any]:
    # tflite_runtime 2.14 (its last release) is built against numpy 1.x and crashes or fails to
    # import under numpy 2, and its TFLite symbols clash with an already-loaded TensorFlow.
    if int(np.__version__.split(".")[0]) >= 2:
        raise RuntimeUnavailableError(
            f"tflite_runtime needs numpy < 2 but numpy {np.__version__} is installed; "
            "use ai-edge-litert instead (pip install ai-edge-litert) or a virtual environment with numpy<2"
        )
    if "tensorflow" in sys.modules:
        raise RuntimeUnavailableError(
            "tflite_runtime cannot be loaded after TensorFlow was imported in the same process; "
            "use ai-edge-litert, or import tflite_runtime in a process without TensorFlow"
        )
    return importlib.import_module("tflite_runtime.interpreter").Interpreter


def _import_tensorflow() -> Callable[..., Any]:
    return importlib.import_module("tensorflow").lite.Interpreter


_IMPORTERS = {"litert": _import_litert, "tflite_runtime": _import_tflite_runtime, "tensorflow": _import_tensorflow}
_PIP = {"litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime", "tensorflow": "tensorflow"}


def load_interpreter_class(runtime: RuntimeName = "auto") -> tuple[Callable[..., Any], str]:
    """Return ``(Interpreter class, runtime name)``.

    ``"auto"`` tries LiteRT (``ai_edge_litert``), then ``tflite_runtime``, then ``tensorflow.lite``.

    Raises
    ------
    RuntimeUnavailableError
        None can be imported; the message says why for each and which pip package to install.
    """
    if runtime != "auto" and runtime not in RUNTIMES:
        raise ParameterError(f"runtime must be 'auto' or one of {RUNTIMES}, got {runtime!r}")
    names = RUNTIMES if runtime == "auto" else (runtime,)
    reasons = []
    for name in names:
        try:
            return _IMPORTERS[name](), name
        except RuntimeUnavailableError as exc:
            reasons.append(f"{name}: {exc}")
        except ImportError as exc:
            reasons.append(f"{name}: not installed ({exc.name or exc}); pip install {_PIP[name]}")
    raise RuntimeUnavailableError("no usable TFLite runtime: " + " | ".join(reasons))


def _quant(detail: dict[str, Any]) -> QuantParams | None:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if detail["dtype"] in (np.int8, np.uint8, np.int16) and scale:
        return QuantParams(scale=float(scale), zero_point=int(zero_point))
    return None


class TFLiteModel:
    """A loaded ``.tflite`` model with one input and one output, called on float arrays.

    Parameters
    ----------
    path
        The ``.tflite`` file.
    num_threads
        Interpreter threads (explicit: the service shares the device with its capture thread).
    runtime
        See :func:`load_interpreter_class`.

    Attributes
    ----------
    input_shape, output_shape : tuple[int, ...]
    input_dtype, output_dtype : numpy dtype
    input_quant, output_quant : QuantParams or None (float tensors)
    runtime : str, the runtime actually used
    """

    def __init__(self, path: str | os.PathLike, *, num_threads: int = 1, runtime: RuntimeName = "auto") -> None:
        path = Path(path)
        if not path.is_file():
            raise BundleError(f"{path}: model file missing")
        if num_threads < 1:
            raise ParameterError(f"num_threads must be >= 1, got {num_threads}")
        interpreter_cls, self.runtime = load_interpreter_class(runtime)
        try:
            self._interpreter = interpreter_cls(model_path=str(path), num_threads=num_threads)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"{path}: not a loadable TFLite model ({exc}); the file is corrupt or truncated, re-export it") from exc
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise BundleError(f"{path}: expected one input and one output, found {len(inputs)} and {len(outputs)}")
        self.path = path
        self._in, self._out = inputs[0], outputs[0]
        self.input_shape = tuple(int(d) for d in self._in["shape"])
        self.output_shape = tuple(int(d) for d in self._out["shape"])
        self.input_dtype = np.dtype(self._in["dtype"])
        self.output_dtype = np.dtype(self._out["dtype"])
        self.input_quant = _quant(self._in)
        self.output_quant = _quant(self._out)
        info = np.iinfo(self.input_dtype) if self.input_quant else None
        self._qmin, self._qmax = (info.min, info.max) if info else (0, 0)
        self._input_index = self._in["index"]
        self._output_index = self._out["index"]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Run one input of ``input_shape`` (float, real units); return the float output."""
        if self.input_quant is not None:
            q = self.input_quant
            x = np.clip(np.rint(x / q.scale) + q.zero_point, self._qmin, self._qmax).astype(self.input_dtype)
        else:
            x = x.astype(self.input_dtype, copy=False)
        # A fused UNIDIRECTIONAL_SEQUENCE_LSTM keeps its final state in variable tensors and starts
        # the next invoke from it; every window is independent, so each starts from zero state.
        self._interpreter.reset_all_variables()
        self._interpreter.set_tensor(self._input_index, x.reshape(self.input_shape))
        self._interpreter.invoke()
        y = self._interpreter.get_tensor(self._output_index)
        if self.output_quant is not None:
            q = self.output_quant
            return (y.astype(np.float32) - q.zero_point) * np.float32(q.scale)
        return y.astype(np.float32, copy=False)
