"""qcc: compile quantized ONNX models of binarized and low-bit networks into bit-packed C."""
__version__ = "0.1.0"

from qcc.errors import QccError  # noqa: E402
from qcc.api import InferenceSession, compile  # noqa: E402

__all__ = ["InferenceSession", "QccError", "compile", "__version__"]
