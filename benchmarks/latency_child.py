"""Per-invoke latency of .tflite files, for a Python that has only numpy and one TFLite runtime.

Run by ``benchmarks.inference`` inside the numpy<2 virtual environment that ``tflite_runtime``
needs; it imports nothing from edge_asd (that environment has no numba or scipy). Prints JSON:
``{path: {"median_ms": .., "p90_ms": .., "runs": ..}}``.

    python latency_child.py RUNTIME REPEATS MODEL.tflite [MODEL.tflite ...]
"""

import json
import sys
import time


def main() -> None:
    runtime, repeats, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    import numpy as np

    if runtime == "tflite_runtime":
        from tflite_runtime.interpreter import Interpreter
    elif runtime == "litert":
        from ai_edge_litert.interpreter import Interpreter
    else:
        raise SystemExit(f"unknown runtime {runtime}")
    out = {}
    rng = np.random.default_rng(0)
    for path in paths:
        interpreter = Interpreter(model_path=path, num_threads=1)
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]
        dtype = detail["dtype"]
        if np.issubdtype(dtype, np.integer):
            x = rng.integers(-128, 128, size=detail["shape"]).astype(dtype)
        else:
            x = rng.standard_normal(detail["shape"]).astype(dtype)
        output = interpreter.get_output_details()[0]["index"]
        times = []
        for i in range(repeats + 5):
            t0 = time.perf_counter()
            interpreter.set_tensor(detail["index"], x)
            interpreter.invoke()
            interpreter.get_tensor(output)
            if i >= 5:  # warm-up
                times.append((time.perf_counter() - t0) * 1e3)
        times.sort()
        out[path] = {"median_ms": times[len(times) // 2], "p90_ms": times[int(0.9 * len(times))], "runs": repeats}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
