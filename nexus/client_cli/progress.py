"""The progress display of ``nexus agents apply --wait`` (written to stderr)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from types import TracebackType

from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

from nexus.client_cli import render

# Spinner frames redrawn per second; the poll itself runs once a second at most.
REFRESH_PER_SECOND = 10

State = tuple[str, bool, str]


class Progress:
    """Phase changes of one agent while the CLI waits for it.

    Every change of (phase, nodeAck, message) is written once as a line,
    ``[   3s] bot Deploying: message``, so the whole Pending → Deploying → Running history stays
    readable afterwards. On an interactive terminal the lines are coloured and a live spinner
    line below them shows the current phase and the time waited; it is erased when the wait
    ends (use as a context manager). Anywhere else only the plain lines are written: no escape
    codes, no carriage returns.
    """

    def __init__(
        self, console: Console, name: str, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.console = console
        self.name = name
        self.clock = clock
        self.started = clock()
        self.state: State | None = None
        utf8 = (console.encoding or "").lower().replace("-", "").startswith("utf")
        self.spinner = Spinner("dots" if utf8 else "line", style="cyan")
        self._live: Live | None = None

    @property
    def live(self) -> bool:
        return self._live is not None

    def __enter__(self) -> Progress:
        if self.console.is_terminal and self.console.is_interactive:
            self._live = Live(
                _CurrentLine(self),
                console=self.console,
                transient=True,
                refresh_per_second=REFRESH_PER_SECOND,
                # Nothing else writes while we wait; leave sys.stdout/sys.stderr alone.
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Erase the live line (an error or the final message is printed after it)."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    def elapsed(self) -> str:
        return render.human_duration(self.clock() - self.started)

    def update(self, phase: str, node_ack: bool, message: str) -> None:
        state = (phase, node_ack, message)
        if state == self.state:
            return
        self.state = state
        # While live, rich prints this above the spinner line.
        self.console.print(self.history_line(), soft_wrap=True)
        if self._live is not None:
            self._live.refresh()

    def history_line(self) -> Text:
        assert self.state is not None
        phase, node_ack, message = self.state
        return Text.assemble(
            (f"[{self.elapsed():>5}]", "dim"),
            f" {self.name} ",
            *self._phase(phase, node_ack),
            f": {message}" if message else "",
        )

    def current_line(self) -> Text:
        phase, node_ack, message = self.state or ("Pending", False, "")
        return Text.assemble(
            (self.name, "bold"),
            "  ",
            *self._phase(phase, node_ack),
            "  ",
            (self.elapsed(), "dim"),
            ("  " + message) if message else "",
        )

    @staticmethod
    def _phase(phase: str, node_ack: bool) -> Iterator[tuple[str, str] | str]:
        yield (phase, render.PHASE_STYLES.get(phase, ""))
        if node_ack:
            yield (" (nodeAck)", "green")


class _CurrentLine:
    """The live line: spinner frame, phase and elapsed time, re-read at every refresh."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        spinner = self.progress.spinner
        spinner.update(text=self.progress.current_line())
        line = spinner.render(console.get_time())
        if isinstance(line, Text):
            # One line, always: a long message is cut at the terminal's edge, not wrapped.
            line.no_wrap = True
            line.overflow = "ellipsis"
        yield line
