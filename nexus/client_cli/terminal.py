"""Where output goes: a ``rich`` console on a terminal, stable plain text everywhere else.

Scripts read the CLI's output through pipes, so the decision is made per stream: a stream that
is not a TTY never receives colours, cursor movement or a live spinner, its tables are never
squeezed to a terminal width and carry no trailing blanks. ``-o json`` bypasses all of this
(see :meth:`Screen.line`).
"""

from __future__ import annotations

import io
from typing import TextIO

from rich.console import Console, RenderableType

# Wide enough that no real table or log line is ever wrapped when nobody is looking at it.
PLAIN_WIDTH = 10_000


def is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (OSError, ValueError):  # a closed or detached stream
        return False


def console_for(stream: TextIO, *, tty: bool | None = None) -> Console:
    """A console writing to ``stream``: styled if it is a terminal, plain otherwise.

    Whether to style is decided here, from the stream alone: ``FORCE_COLOR`` or
    ``TTY_COMPATIBLE`` in the environment must not put escape codes into a pipe.
    ``NO_COLOR`` is still honoured on a terminal (rich reads it).
    """
    terminal = is_tty(stream) if tty is None else tty
    # markup/emoji off: every string shown comes from the server or the user, never from us.
    if terminal:
        return Console(file=stream, force_terminal=True, highlight=False, markup=False, emoji=False)
    return Console(
        file=stream,
        force_terminal=False,
        force_interactive=False,
        color_system=None,
        width=PLAIN_WIDTH,
        highlight=False,
        markup=False,
        emoji=False,
    )


def plain_lines(console: Console, renderable: RenderableType, *, soft_wrap: bool = False) -> str:
    """``renderable`` as text without styles, each line right-stripped."""
    with console.capture() as captured:
        console.print(renderable, soft_wrap=soft_wrap)
    return "\n".join(line.rstrip() for line in captured.get().splitlines())


def to_text(renderable: RenderableType) -> str:
    """What ``renderable`` looks like on a pipe (used by tests and for plain output)."""
    return plain_lines(console_for(io.StringIO(), tty=False), renderable)


class Screen:
    """One output stream (stdout or stderr) of one command."""

    def __init__(self, stream: TextIO, console: Console | None = None) -> None:
        self.stream = stream
        self.console = console if console is not None else console_for(stream)

    @property
    def is_terminal(self) -> bool:
        return self.console.is_terminal

    def line(self, text: str) -> None:
        """``text`` verbatim (messages, raw keys, JSON documents); nothing when empty."""
        if text:
            self.stream.write(text + "\n")
            self.stream.flush()

    def show(self, renderable: RenderableType, *, soft_wrap: bool = False) -> None:
        """A table or styled text: rich on a terminal, stable plain lines otherwise."""
        if self.is_terminal:
            self.console.print(renderable, soft_wrap=soft_wrap)
            return
        self.line(plain_lines(self.console, renderable, soft_wrap=soft_wrap))
