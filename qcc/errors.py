"""The one error type qcc raises for bad input: a single line that names the place and the fix."""
from __future__ import annotations


class QccError(Exception):
    """A user-facing error: the CLI prints ``str(err)`` on one line and exits with code 2.

    ``node`` and ``op`` name where the problem is (an ONNX node name and op type), ``what``
    says what is wrong and, where possible, what is supported instead.
    """

    def __init__(self, what: str, *, node: str | None = None, op: str | None = None):
        self.what = " ".join(str(what).split())  # always one line
        self.node = node
        self.op = op
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if node := self.node:
            where.append(f"node '{node}'")
        if self.op:
            where.append(f"({self.op})")
        prefix = " ".join(where)
        return f"{prefix}: {self.what}" if prefix else self.what
