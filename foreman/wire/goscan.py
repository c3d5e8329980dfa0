"""Go's JSON scanner, enough of it to name the first syntax error as Go does.

Go's ``encoding/json`` checks a whole value before it decodes any of it, so
a body's first syntax error, or its first bracket past Go's nesting limit
(``maxNestingDepth``, 10000), is what Ollama answers, whatever else is wrong
with the body. The scanner here walks the bytes with a stack of its own
rather than by recursion, so no depth of nesting can exhaust Python's stack.
"""

from __future__ import annotations

#: ``encoding/json``'s ``maxNestingDepth``: the 10001st open bracket is an error.
GO_MAX_DEPTH = 10000

_WHITESPACE = b" \t\r\n"
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = frozenset(b'"\\/bfnrt')
_OPEN_OBJECT, _CLOSE_OBJECT = ord("{"), ord("}")
_OPEN_ARRAY, _CLOSE_ARRAY = ord("["), ord("]")
_NAMED = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
}


def quote_char(byte: int) -> str:
    """Go's ``quoteChar``: a byte as its scanner's errors print it."""
    if byte == ord("'"):
        return "'\\''"
    if byte == ord('"'):
        return "'\"'"
    char = chr(byte)
    if char in _NAMED:
        return f"'{_NAMED[char]}'"
    if byte < 0x20 or byte == 0x7F:
        return f"'\\x{byte:02x}'"
    if 0x80 <= byte < 0xA0:
        return f"'\\u{byte:04x}'"
    if byte == 0xAD:
        return "'\\u00ad'"
    return f"'{char}'"


class _Scanner:
    """One pass over the first JSON value of ``data``, iterative."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def error(self, context: str) -> str:
        if self.pos >= len(self.data):
            return "unexpected EOF"
        return f"invalid character {quote_char(self.data[self.pos])} {context}"

    def skip_space(self) -> None:
        while self.pos < len(self.data) and self.data[self.pos] in _WHITESPACE:
            self.pos += 1

    def peek(self) -> int | None:
        return self.data[self.pos] if self.pos < len(self.data) else None

    def first_value(self, max_depth: int) -> str | None:
        """Go's error for the first value, or ``None`` when it is well formed."""
        # The open brackets around the current position, innermost last.
        open_brackets: list[int] = []
        want_value = True
        while True:
            if want_value:
                self.skip_space()
                c = self.peek()
                if c is None:
                    return "unexpected EOF"
                if c in (_OPEN_OBJECT, _OPEN_ARRAY):
                    if len(open_brackets) >= max_depth:
                        return self.error("exceeded max depth")
                    open_brackets.append(c)
                    self.pos += 1
                    self.skip_space()
                    close = _CLOSE_OBJECT if c == _OPEN_OBJECT else _CLOSE_ARRAY
                    if self.peek() == close:
                        self.pos += 1
                        open_brackets.pop()
                        want_value = False
                    elif c == _OPEN_OBJECT and (error := self.object_key()) is not None:
                        return error
                    continue
                if (error := self.scalar(c)) is not None:
                    return error
            # A value just ended: the end of the document, or what follows it.
            if not open_brackets:
                return None
            self.skip_space()
            in_object = open_brackets[-1] == _OPEN_OBJECT
            c = self.peek()
            if c == ord(","):
                self.pos += 1
                if in_object and (error := self.object_key()) is not None:
                    return error
                want_value = True
            elif c == (_CLOSE_OBJECT if in_object else _CLOSE_ARRAY):
                self.pos += 1
                open_brackets.pop()
                want_value = False
            else:
                return self.error(
                    "after object key:value pair" if in_object else "after array element"
                )

    def object_key(self) -> str | None:
        """A key and its colon; the value comes next."""
        self.skip_space()
        if self.peek() != ord('"'):
            return self.error("looking for beginning of object key string")
        if (error := self.string()) is not None:
            return error
        self.skip_space()
        if self.peek() != ord(":"):
            return self.error("after object key")
        self.pos += 1
        return None

    def scalar(self, c: int) -> str | None:
        if c == ord('"'):
            return self.string()
        if c == ord("-") or ord("0") <= c <= ord("9"):
            return self.number()
        for word in (b"true", b"false", b"null"):
            if c == word[0]:
                return self.literal(word)
        return self.error("looking for beginning of value")

    def literal(self, word: bytes) -> str | None:
        for expected in word:
            c = self.peek()
            if c is None:
                return "unexpected EOF"
            if c != expected:
                return self.error(f"in literal {word.decode()} (expecting {quote_char(expected)})")
            self.pos += 1
        return None

    def number(self) -> str | None:
        if self.peek() == ord("-"):
            self.pos += 1
            c = self.peek()
            if c is None:
                return "unexpected EOF"
            if not ord("0") <= c <= ord("9"):
                return self.error("in numeric literal")
        if self.peek() == ord("0"):
            self.pos += 1
        else:
            self.digits()
        if self.peek() == ord("."):
            self.pos += 1
            c = self.peek()
            if c is None:
                return "unexpected EOF"
            if not ord("0") <= c <= ord("9"):
                return self.error("after decimal point in numeric literal")
            self.digits()
        if self.peek() in (ord("e"), ord("E")):
            self.pos += 1
            if self.peek() in (ord("+"), ord("-")):
                self.pos += 1
            c = self.peek()
            if c is None:
                return "unexpected EOF"
            if not ord("0") <= c <= ord("9"):
                return self.error("in exponent of numeric literal")
            self.digits()
        return None

    def digits(self) -> None:
        while (c := self.peek()) is not None and ord("0") <= c <= ord("9"):
            self.pos += 1

    def string(self) -> str | None:
        self.pos += 1  # opening quote
        while True:
            c = self.peek()
            if c is None:
                return "unexpected EOF"
            if c == ord('"'):
                self.pos += 1
                return None
            if c < 0x20:
                return self.error("in string literal")
            if c == ord("\\"):
                self.pos += 1
                e = self.peek()
                if e is None:
                    return "unexpected EOF"
                if e == ord("u"):
                    self.pos += 1
                    for _ in range(4):
                        h = self.peek()
                        if h is None:
                            return "unexpected EOF"
                        if h not in _HEX_DIGITS:
                            return self.error("in \\u hexadecimal character escape")
                        self.pos += 1
                    continue
                if e not in _ESCAPES:
                    return self.error("in string escape code")
            self.pos += 1


def first_value_error(data: bytes, max_depth: int = GO_MAX_DEPTH) -> str | None:
    """Go's syntax error for the first JSON value in ``data``, or ``None``.

    ``data`` starts at the value (leading blanks are skipped); what follows
    the first value is not looked at, as Go's ``json.Decoder`` reads one
    value at a time.
    """
    return _Scanner(data).first_value(max_depth)
