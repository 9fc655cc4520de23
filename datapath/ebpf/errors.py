"""The toolkit's few error classes. Each message names the object and, where
there is one, the fix."""
from __future__ import annotations


class BpfError(Exception):
    """Base of every toolkit error."""


class AssemblyError(BpfError):
    """Bad builder input or assembler text: undefined label, offset out of
    range, unknown mnemonic. Carries the source line when there is one."""

    def __init__(self, message: str, line: int | None = None, text: str | None = None):
        self.line = line
        self.text = text
        where = f"line {line}: " if line is not None else ""
        shown = f"\n    {text.strip()}" if text else ""
        super().__init__(f"{where}{message}{shown}")


class KernelError(BpfError):
    """A bpf() or netlink call failed. `errno` is the kernel's error number."""

    def __init__(self, message: str, errno: int = 0):
        self.errno = errno
        super().__init__(message)


class VerifierError(KernelError):
    """The kernel verifier rejected a program; `log` is its full log and the
    message ends with the verifier's reason (the log's last lines)."""

    def __init__(self, message: str, log: str, errno: int = 0):
        self.log = log
        super().__init__(message, errno)


class VmError(BpfError):
    """The VM stopped a program the kernel would have rejected or killed: an
    out-of-bounds access, an uninitialised register, an unknown helper, too
    many instructions. `pc` is the slot index of the faulting instruction."""

    def __init__(self, message: str, pc: int | None = None):
        self.pc = pc
        where = f"pc {pc}: " if pc is not None else ""
        super().__init__(f"{where}{message}")
