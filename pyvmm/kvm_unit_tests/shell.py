"""The bit of bash that unittests.cfg values use, evaluated in Python: words with quotes, `$VAR`/`${VAR}`, `$((...))`
arithmetic (smp = $((($MAX_SMP < 8)?$MAX_SMP:8))), and `disabled_if` conditions (`[[ "$TARGET" != qemu ]]`).

kvm-unit-tests' runner eval's these values in bash; pyvmm does not need bash on the host (an arm64 board's busybox
userspace has none), so it evaluates the same forms itself and refuses, in one line, anything beyond them (command
substitution, say) rather than guessing.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Mapping

from pyvmm.errors import UsageError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ARITH_TOKEN = re.compile(r"\s*(\d+|[A-Za-z_][A-Za-z0-9_]*|\$[A-Za-z_][A-Za-z0-9_]*|&&|\|\||[<>=!]=|<<|>>|[-+*/%()<>!?:])")


class ShellError(ValueError):
    pass


def words(text: str, variables: Mapping[str, str], what: str) -> list[str]:
    """The words `text` expands to, as bash's `eval "set -- $text"` would give them, with `variables` set."""
    try:
        return _split(text, variables)
    except ShellError as err:
        raise UsageError(f"{what} {text!r}: {err}") from None


def condition(text: str, variables: Mapping[str, str], what: str = "disabled_if") -> bool:
    """Whether the command `text` succeeds: `[[ ... ]]`, `[ ... ]`/`test ...`, `true`, `false`, joined by && and ||."""
    try:
        return _condition(_split(text, variables, keep_operators=True))
    except ShellError as err:
        raise UsageError(f"{what} {text!r}: {err}") from None


# -- words ------------------------------------------------------------------------------------------------------
def _split(text: str, variables: Mapping[str, str], keep_operators: bool = False) -> list[str]:
    result: list[str] = []
    current: list[str] = []
    started = False  # a word exists even when empty ("")
    i = 0
    while i < len(text):
        char = text[i]
        if char in " \t\n":
            if started:
                result.append("".join(current))
                current, started = [], False
            i += 1
        elif char == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise ShellError("a single quote is not closed")
            current.append(text[i + 1:end])
            started, i = True, end + 1
        elif char == '"':
            i, chunk = _double_quoted(text, i + 1, variables)
            current.append(chunk)
            started = True
        elif char == "\\" and i + 1 < len(text):
            current.append(text[i + 1])
            started, i = True, i + 2
        elif char == "$":
            i, value = _expand(text, i, variables)
            for n, piece in enumerate(value.split()):  # unquoted: split into words
                if n:
                    result.append("".join(current))
                    current = []
                current.append(piece)
                started = True
        elif char in "`;|&<>(){}" and not (keep_operators and text.startswith(("&&", "||"), i)):
            raise ShellError(f"{char!r} is beyond what pyvmm evaluates (words, quotes, $VAR, $((...)))")
        elif keep_operators and text.startswith(("&&", "||"), i):
            if started:
                result.append("".join(current))
                current, started = [], False
            result.append(text[i:i + 2])
            i += 2
        else:
            current.append(char)
            started, i = True, i + 1
    if started:
        result.append("".join(current))
    return result


def _double_quoted(text: str, i: int, variables: Mapping[str, str]) -> tuple[int, str]:
    chunk: list[str] = []
    while i < len(text):
        char = text[i]
        if char == '"':
            return i + 1, "".join(chunk)
        if char == "\\" and i + 1 < len(text) and text[i + 1] in '$`"\\':
            chunk.append(text[i + 1])
            i += 2
        elif char == "$":
            i, value = _expand(text, i, variables)
            chunk.append(value)
        elif char == "`":
            raise ShellError("command substitution is beyond what pyvmm evaluates")
        else:
            chunk.append(char)
            i += 1
    raise ShellError("a double quote is not closed")


def _expand(text: str, i: int, variables: Mapping[str, str]) -> tuple[int, str]:
    """`$((expr))`, `${NAME}` or `$NAME` at text[i]; returns the index after it and its value."""
    if text.startswith("$((", i):
        depth, j = 0, i + 1
        while j < len(text):
            depth += {"(": 1, ")": -1}.get(text[j], 0)
            if depth == 0:
                break
            j += 1
        if depth != 0 or not text.startswith("))", j - 1):
            raise ShellError("$(( is not closed by ))")
        return j + 1, str(_arithmetic(text[i + 3:j - 1], variables))
    if text.startswith("$(", i):
        raise ShellError("command substitution is beyond what pyvmm evaluates")
    if text.startswith("${", i):
        end = text.find("}", i)
        if end < 0 or not _NAME.fullmatch(text[i + 2:end]):
            raise ShellError("only ${NAME} is evaluated")
        return end + 1, variables.get(text[i + 2:end], "")
    match = _NAME.match(text, i + 1)
    if match is None:
        return i + 1, "$"
    return match.end(), variables.get(match.group(0), "")


# -- $(( )) ------------------------------------------------------------------------------------------------------
def _arithmetic(expression: str, variables: Mapping[str, str]) -> int:
    tokens, position = [], 0
    while position < len(expression.rstrip()):
        match = _ARITH_TOKEN.match(expression, position)
        if match is None:
            raise ShellError(f"cannot evaluate $(({expression}))")
        tokens.append(match.group(1))
        position = match.end()
    parser = _Arithmetic(tokens, variables)
    value = parser.ternary()
    if parser.tokens:
        raise ShellError(f"cannot evaluate $(({expression}))")
    return value


class _Arithmetic:
    """C precedence for what cfg files use: ?:, ||, &&, comparisons, + -, * / %, unary - and !, parentheses."""

    LEVELS = [("||",), ("&&",), ("==", "!="), ("<", "<=", ">", ">="), ("+", "-"), ("*", "/", "%")]

    def __init__(self, tokens: list[str], variables: Mapping[str, str]) -> None:
        self.tokens = tokens
        self.variables = variables

    def take(self, expected: str | None = None) -> str:
        if not self.tokens or (expected is not None and self.tokens[0] != expected):
            raise ShellError(f"expected {expected or 'more'} in $((...))")
        return self.tokens.pop(0)

    def ternary(self) -> int:
        test = self.binary(0)
        if self.tokens and self.tokens[0] == "?":
            self.take("?")
            yes = self.ternary()
            self.take(":")
            no = self.ternary()
            return yes if test else no
        return test

    def binary(self, level: int) -> int:
        if level == len(self.LEVELS):
            return self.unary()
        value = self.binary(level + 1)
        while self.tokens and self.tokens[0] in self.LEVELS[level]:
            op, right = self.take(), self.binary(level + 1)
            if op in ("/", "%") and right == 0:
                raise ShellError("division by zero in $((...))")
            value = {"||": lambda a, b: int(bool(a or b)), "&&": lambda a, b: int(bool(a and b)),
                     "==": lambda a, b: int(a == b), "!=": lambda a, b: int(a != b), "<": lambda a, b: int(a < b),
                     "<=": lambda a, b: int(a <= b), ">": lambda a, b: int(a > b), ">=": lambda a, b: int(a >= b),
                     "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
                     "/": lambda a, b: int(a / b), "%": lambda a, b: a - b * int(a / b)}[op](value, right)
        return value

    def unary(self) -> int:
        token = self.take()
        if token == "-":
            return -self.unary()
        if token == "!":
            return int(not self.unary())
        if token == "(":
            value = self.ternary()
            self.take(")")
            return value
        if token.isdigit():
            return int(token)
        if _NAME.fullmatch(token.lstrip("$")):
            value = self.variables.get(token.lstrip("$"), "0") or "0"
            if not value.lstrip("-").isdigit():
                raise ShellError(f"{token} is {value!r}, not a number")
            return int(value)
        raise ShellError(f"unexpected {token!r} in $((...))")


# -- conditions --------------------------------------------------------------------------------------------------
_TESTS = {"==": lambda a, b: fnmatch.fnmatchcase(a, b), "=": lambda a, b: fnmatch.fnmatchcase(a, b),
          "!=": lambda a, b: not fnmatch.fnmatchcase(a, b)}
_NUMERIC = {"-eq": int.__eq__, "-ne": int.__ne__, "-lt": int.__lt__, "-le": int.__le__, "-gt": int.__gt__,
            "-ge": int.__ge__}


def _condition(tokens: list[str]) -> bool:
    """Left to right, as the shell runs `a && b || c`."""
    result, op, command = True, "&&", []
    for token in [*tokens, "&&"]:
        if token in ("&&", "||"):
            if not command:
                raise ShellError(f"nothing before {token}")
            if (op == "&&" and result) or (op == "||" and not result):
                result = _command(command)
            op, command = token, []
        else:
            command.append(token)
    return result


def _command(argv: list[str]) -> bool:
    if argv[0] == "!" and len(argv) > 1:  # `! cmd`: the pipeline's status negated
        return not _command(argv[1:])
    if argv in (["true"], [":"]):
        return True
    if argv == ["false"]:
        return False
    if argv[0] == "[[" and argv[-1] == "]]" or argv[0] == "[" and argv[-1] == "]":
        argv = argv[1:-1]
    elif argv[0] == "test":
        argv = argv[1:]
    else:
        raise ShellError(f"{argv[0]!r}: only [[ ]], [ ], test, true and false are evaluated")
    negate = bool(argv) and argv[0] == "!"
    argv = argv[1:] if negate else argv
    if len(argv) == 1:
        value = argv[0] != ""
    elif len(argv) == 2 and argv[0] in ("-n", "-z"):
        value = (argv[1] != "") == (argv[0] == "-n")
    elif len(argv) == 3 and argv[1] in _TESTS:
        value = _TESTS[argv[1]](argv[0], argv[2])
    elif len(argv) == 3 and argv[1] in _NUMERIC:
        try:
            value = _NUMERIC[argv[1]](int(argv[0]), int(argv[2]))
        except ValueError:
            raise ShellError(f"{argv[0]!r} {argv[1]} {argv[2]!r} compares non-numbers") from None
    else:
        raise ShellError(f"cannot evaluate the test {' '.join(argv)!r}")
    return value != negate
