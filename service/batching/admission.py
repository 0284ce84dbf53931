"""Admission: the queue slots of one scheduler, counted from the moment a request arrives.

A request takes one slot on arrival, before its body is read (``AdmissionControl.reserve``), grows it
to one per sequence once decoded (``Ticket.resize``), and gives them all back on every exit path
(answer, error, cancellation: ``Ticket`` is a context manager). Once the queue is spoken for, the next
request is refused at once, before its upload and decoding would stall the requests already admitted.
This class is the only owner of the count."""

from __future__ import annotations

from ..errors import Overloaded, Unavailable


class AdmissionControl:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held = 0
        self._closed = False
        self._idle = None  # asyncio.Event set while nothing is held (created by wait_idle)

    @property
    def held(self) -> int:
        """Slots held now: requests being read plus sequences queued or running."""
        return self._held

    def close(self) -> None:
        """Refuse every new request from now on (shutdown); tickets already held stay valid."""
        self._closed = True

    def reserve(self, slots: int = 1) -> Ticket:
        """A ticket holding ``slots`` slots; raises Overloaded when they are not free."""
        if self._closed:
            raise Unavailable("server is shutting down")
        ticket = Ticket(self)
        ticket.resize(slots)
        return ticket

    async def wait_idle(self) -> None:
        """Until no request holds a slot (the requests admitted before ``close`` have finished)."""
        import asyncio

        if self._idle is None:
            self._idle = asyncio.Event()
        if self._held == 0:
            self._idle.set()
        await self._idle.wait()

    def _change(self, delta: int) -> None:
        if delta > 0 and self._held + delta > self.limit:
            raise Overloaded(
                f"server at capacity ({self._held} sequences queued, limit {self.limit}); retry later"
            )
        self._held += delta
        if self._idle is not None:
            if self._held == 0:
                self._idle.set()
            else:
                self._idle.clear()


class Ticket:
    """The slots one request holds; resize to one per decoded sequence, release on every exit."""

    __slots__ = ("_control", "held")

    def __init__(self, control: AdmissionControl) -> None:
        self._control = control
        self.held = 0

    def resize(self, slots: int) -> None:
        self._control._change(slots - self.held)
        self.held = slots

    def release(self) -> None:
        self._control._change(-self.held)
        self.held = 0

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
