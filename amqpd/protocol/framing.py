"""Split a byte stream into AMQP frames, checking everything pamqp does not.

pamqp's ``frame.unmarshal`` accepts a 7-byte heartbeat with no frame-end octet and never
enforces a size limit, so framing is ours: the frame-end octet, the negotiated frame_max and
the frame type are checked here, before any payload is decoded.

Theory of operation: frames are cut from the current read with slicing, which makes each
payload an independent ``bytes`` object in one copy: the caller may keep it after the buffer
moves on. Most reads end in the middle of a frame. When the unparsed tail is shorter than a
frame header, it is joined with the next read. Once the header is known, the reads that
complete the frame are kept as a list (no copy) until the frame is whole; a method or header
payload is then joined from them in one copy, while the rest of the last read stays where it
is.

Body frames are not copied here at all: the channel joins all the body frames of a message
into its body anyway, so a copy here would be a second full copy of every large message.
A body frame of at least ``_VIEW_MIN`` bytes inside one read comes out as a memoryview of
that read, and a body frame spread over reads comes out as several body frames, one per
piece of a read (memoryviews or whole reads), all of them once the frame is complete and its
frame-end octet checked. The views are safe to keep: they only ever point into reads, which
are immutable ``bytes``, never into a buffer that is reused. Method, header and heartbeat
payloads are always ``bytes``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from amqpd.protocol.constants import (
    FRAME_BODY,
    FRAME_END,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
)
from amqpd.protocol.errors import FrameError

_FRAME_HEADER = struct.Struct(">BHI")
_KNOWN_TYPES = frozenset({FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT})

Frame = tuple[int, int, bytes | memoryview]

# Smaller body payloads are copied to bytes: a view costs more than copying a few KiB, the
# body of a one-frame message is then used as it is, and a view keeps its whole read (at most
# 1 MiB, server.py) alive until the message is complete, which this bounds to 64 times the
# bytes it shows, against a publisher trickling tiny frames of a message that never ends.
_VIEW_MIN = 16384


class FrameReader:
    """Incremental frame splitter with a size limit."""

    __slots__ = (
        "_data",
        "_need",
        "_offset",
        "_parts",
        "_parts_size",
        "_ready",
        "_ready_end",
        "frame_max",
    )

    def __init__(self, frame_max: int) -> None:
        self._data = b""
        self._offset = 0
        # The frame at the end of _data whose header was read but not its end: its length
        # (header, payload and end octet), then the reads that add to it.
        self._need = 0
        self._parts: list[bytes | memoryview] = []
        self._parts_size = 0
        # That frame once complete (returned first by frames(): several body frames if it
        # was one, a piece of a read each) and its frame-end octet.
        self._ready: list[Frame] = []
        self._ready_end = FRAME_END
        self.frame_max = frame_max

    def feed(self, data: bytes) -> None:
        """Append received bytes (immutable: body frames may be views into them)."""
        if self._need:
            if not self._parts:
                self._parts.append(memoryview(self._data)[self._offset :])
                self._parts_size = len(self._data) - self._offset
            self._parts_size += len(data)
            if self._parts_size >= self._need:
                self._assemble(data)
            else:
                self._parts.append(data)
            return
        if self._offset < len(self._data):
            self._data = self._data[self._offset :] + data
        else:
            self._data = data
        self._offset = 0

    def _assemble(self, last: bytes) -> None:
        """Make the pending frame ready from its parts and ``last``, the read that completes
        it (a method or header payload joined, a body frame as one frame per piece); that read
        becomes the buffer, from the byte after the frame."""
        parts = self._parts
        used = len(last) - (self._parts_size - self._need)  # >= 1: the frame was short of it
        first = parts[0]
        frame_type, channel, _ = _FRAME_HEADER.unpack_from(first, 0)
        segments: list[bytes | memoryview] = [first[7:]]
        segments.extend(parts[1:])
        segments.append(memoryview(last)[: used - 1])
        if frame_type == FRAME_BODY:
            # The middle parts are whole reads, all payload; a small piece at either end is
            # copied rather than pin the rest of its read (see _VIEW_MIN).
            self._ready = [
                (frame_type, channel, segment if len(segment) >= _VIEW_MIN else bytes(segment))
                for segment in segments
                if segment
            ]
            if not self._ready:
                self._ready = [(frame_type, channel, b"")]
        else:
            self._ready = [(frame_type, channel, b"".join(segments))]
        self._ready_end = last[used - 1]
        self._data = last
        self._offset = used
        self._parts = []
        self._parts_size = 0
        self._need = 0

    @property
    def pending_frame_size(self) -> int:
        """Size of the incomplete frame whose header was read (0: none)."""
        return self._need

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        if self._parts:
            return self._parts_size
        ready = self._ready
        return len(self._data) - self._offset + (
            sum(len(piece[2]) for piece in ready) + 8 if ready else 0
        )

    def frames(self) -> Iterator[Frame]:
        """Yield ``(frame_type, channel, payload)`` for every complete frame buffered.

        Raises:
            FrameError: on a bad frame-end octet, an unknown frame type or an oversize frame.
        """
        ready = self._ready
        if ready:
            self._ready = []
            if self._ready_end != FRAME_END:
                raise FrameError(
                    f"frame-end octet is 0x{self._ready_end:02x}, expected 0xce "
                    f"(frame type {ready[0][0]}, channel {ready[0][1]}, "
                    f"size {sum(len(piece[2]) for piece in ready)})"
                )
            yield from ready
        if self._parts:
            return
        data = self._data
        size_of_data = len(data)
        offset = self._offset
        unpack_header = _FRAME_HEADER.unpack_from
        known = _KNOWN_TYPES
        frame_max = self.frame_max
        view: memoryview | None = None
        while size_of_data - offset >= 7:
            frame_type, channel, size = unpack_header(data, offset)
            if frame_type not in known:
                raise FrameError(f"unknown frame type {frame_type}")
            # RabbitMQ-compat: frame_max bounds the whole frame, but RabbitMQ tolerates
            # 8 bytes over it (clients that count only the payload), and so do we.
            if size > frame_max:
                raise FrameError(
                    f"frame payload of {size} bytes exceeds the negotiated frame_max of "
                    f"{frame_max} bytes"
                )
            end = offset + 7 + size
            if size_of_data <= end:
                # Checked and incomplete: the next reads are collected, not joined.
                self._need = size + 8
                break
            if data[end] != FRAME_END:
                raise FrameError(
                    f"frame-end octet is 0x{data[end]:02x}, expected 0xce "
                    f"(frame type {frame_type}, channel {channel}, size {size})"
                )
            start = offset + 7
            offset = self._offset = end + 1
            if frame_type == FRAME_BODY and size >= _VIEW_MIN:
                if view is None:
                    view = memoryview(data)
                yield frame_type, channel, view[start:end]
            else:
                yield frame_type, channel, data[start:end]
            frame_max = self.frame_max  # connection.tune-ok may have changed it
