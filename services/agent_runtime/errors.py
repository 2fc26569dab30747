"""What the agent runtime refuses, each with the HTTP status it maps to and what to do."""

from __future__ import annotations


class RuntimeRefusal(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class UnknownTemplate(RuntimeRefusal):
    status, code = 422, "unknown_template"


class TemplateUnavailable(RuntimeRefusal):
    status, code = 503, "template_unavailable"


class SandboxNotFound(RuntimeRefusal):
    status, code = 404, "sandbox_not_found"


class SandboxGone(RuntimeRefusal):
    status, code = 410, "sandbox_gone"


class TooManySandboxes(RuntimeRefusal):
    status, code = 429, "too_many_sandboxes"


class InvalidCommand(RuntimeRefusal):
    status, code = 422, "invalid_command"


class FileTooLarge(RuntimeRefusal):
    status, code = 413, "file_too_large"


class BadPath(RuntimeRefusal):
    status, code = 422, "bad_path"


def check_command(argv: list[str], *, max_bytes: int = 256 * 1024) -> None:
    """Refuse what cannot be executed as given: empty, NUL bytes, text that is not UTF-8."""
    if not argv or not argv[0]:
        raise InvalidCommand("the command is empty: give a program and its arguments, e.g. [\"ls\", \"-l\"]")
    total = 0
    for i, arg in enumerate(argv):
        if "\x00" in arg:
            raise InvalidCommand(f"argument {i} contains a NUL byte, which no program can receive")
        try:
            total += len(arg.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidCommand(f"argument {i} is not valid UTF-8 text (it holds a lone surrogate);"
                                 " send binary data as a file instead") from None
    if total > max_bytes:
        raise InvalidCommand(f"the command is {total} bytes; the limit is {max_bytes}:"
                             " put long input in a file and pass its path")
