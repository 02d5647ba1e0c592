"""How a call to a node fails."""

from __future__ import annotations


class NodeError(Exception):
    """The node answered with an error status, or could not be reached (status 0)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"node {status or 'unreachable'}: {message}")

    @property
    def unreachable(self) -> bool:
        return self.status == 0

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def permanent(self) -> bool:
        """A rejected spec: retrying the same spec cannot succeed."""
        return self.status in (400, 409, 422)
