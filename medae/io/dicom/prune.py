"""Enhanced multi-frame headers cut down to what the loader reads, before pydicom parses them.

An enhanced file's header is mostly its per-frame functional groups: for each frame a dozen
nested sequences, most of them (private groups, real-world value maps, VOI LUTs) never read
here.  pydicom parses every undefined-length sequence it meets, even with ``specific_tags``, so
on a Philips file 90% of the header pass went into values nobody asked for.

:func:`pruned_header` walks the data set's structure (element headers and lengths only, never a
value) and writes a smaller data set holding the top-level elements the loader asks for and, in
the shared and per-frame functional group sequences, only the functional groups it reads; those
are copied byte for byte, sequences and items re-encoded with undefined lengths (so no length
needs recomputing).  pydicom then parses that.  Anything the walk does not expect (a preamble-
less file, a deflated or unknown transfer syntax, an invalid VR, a UN sequence, a truncated
element) returns None and pydicom parses the file as it is.
"""

from __future__ import annotations

import functools
import struct

from pydicom.datadict import keyword_dict
from pydicom.uid import UID

ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
SHARED, PER_FRAME = 0x52009229, 0x52009230
PIXEL_TAGS = frozenset((0x7FE00010, 0x7FE00008, 0x7FE00009))
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
             b"UT", b"UV"}
#: functional groups the loader reads (frames.py); every *FrameTypeSequence is added
_GROUPS = ("PlanePositionSequence", "PlaneOrientationSequence", "PixelMeasuresSequence",
           "PixelValueTransformationSequence", "FrameContentSequence", "MREchoSequence",
           "MRDiffusionSequence")


class _Unexpected(Exception):
    """Something the walk does not handle: pydicom reads the file as it is."""


@functools.cache
def _group_tags() -> frozenset[int]:
    return frozenset(tag for keyword, tag in keyword_dict.items()
                     if keyword in _GROUPS or keyword.endswith("FrameTypeSequence"))


_META_ELEMENT = struct.Struct("<HH2sH")
_META_LONG = struct.Struct("<L")


def meta_group(buf: bytes) -> tuple[dict[int, tuple[str, int, int]], int] | None:
    """The file meta group (explicit VR little endian group 0002 after the preamble and
    ``DICM``): per tag its VR, value offset and value length, and the offset of the data set
    after the group; None without a preamble (pydicom guesses the encoding there) or when an
    element has an invalid VR, an undefined length or runs past ``buf``."""
    if len(buf) < 132 or buf[128:132] != b"DICM":
        return None
    pos, out, end = 132, {}, len(buf)
    while pos + 8 <= end:
        group, elem, vr, length = _META_ELEMENT.unpack_from(buf, pos)
        if group != 0x0002:
            break
        if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            return None
        head = 8
        if vr in LONG_VRS:
            if pos + 12 > end:
                return None
            length, head = _META_LONG.unpack_from(buf, pos + 8)[0], 12
        if length == UNDEFINED or pos + head + length > end:
            return None
        out[0x00020000 | elem] = (vr.decode("ascii"), pos + head, length)
        pos += head + length
    return out, pos


def _dataset_start(buf: bytes) -> tuple[int, str] | None:
    """Offset of the data set after the preamble and file meta group, and the transfer syntax
    UID; None without them (:func:`meta_group`)."""
    found = meta_group(buf)
    if found is None or 0x00020010 not in found[0]:
        return None
    _, at, length = found[0][0x00020010]
    return found[1], buf[at:at + length].decode("ascii", "replace").rstrip("\0 ")


class _Walk:
    def __init__(self, buf: bytes, explicit: bool, little: bool):
        order = "<" if little else ">"
        self.buf, self.explicit, self.order = buf, explicit, order
        self._item = struct.Struct(order + "HHL")
        self._explicit = struct.Struct(order + "HH2sH")
        self._long = struct.Struct(order + "L")

    def element(self, pos: int) -> tuple[int, int, int, bytes | None]:
        """(tag, header length, value length, VR or None) of the element at ``pos``."""
        if pos + 8 > len(self.buf):
            raise _Unexpected("truncated")
        if not self.explicit:
            group, elem, length = self._item.unpack_from(self.buf, pos)
            return (group << 16) | elem, 8, length, None
        group, elem, vr, length = self._explicit.unpack_from(self.buf, pos)
        tag = (group << 16) | elem
        if group == 0xFFFE:   # item and delimiters: no VR, 4-byte length
            return tag, 8, self._item.unpack_from(self.buf, pos)[2], None
        if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            raise _Unexpected("invalid VR")
        if vr in LONG_VRS:
            if pos + 12 > len(self.buf):
                raise _Unexpected("truncated")
            length = self._long.unpack_from(self.buf, pos + 8)[0]
            if vr == b"UN" and length == UNDEFINED:
                raise _Unexpected("UN sequence")   # implicit VR inside: leave it to pydicom
            return tag, 12, length, vr
        return tag, 8, length, vr

    def end_of(self, pos: int) -> int:
        """Offset just past the element at ``pos``."""
        _, head, length, _ = self.element(pos)
        if length == UNDEFINED:
            return self.items(pos + head, UNDEFINED)[1]
        end = pos + head + length
        if end > len(self.buf):
            raise _Unexpected("truncated")
        return end

    def items(self, pos: int, length: int) -> tuple[list[list[tuple[int, int, int]]], int]:
        """The elements (tag, start, end) of each item of the sequence value at ``pos``, and
        the offset past the value (past its delimiter when of undefined length)."""
        buf, stop = self.buf, None if length == UNDEFINED else pos + length
        if stop is not None and stop > len(buf):
            raise _Unexpected("truncated")
        out = []
        while stop is None or pos < stop:
            if pos + 8 > len(buf):
                raise _Unexpected("truncated")
            group, elem, item_length = self._item.unpack_from(buf, pos)
            tag = (group << 16) | elem
            if tag == SEQ_END and stop is None:
                return out, pos + 8
            if tag != ITEM:
                raise _Unexpected("not an item")
            elements, pos = self.elements(pos + 8, item_length)
            out.append(elements)
        if pos != stop:
            raise _Unexpected("item overruns its sequence")
        return out, pos

    def elements(self, pos: int, length: int) -> tuple[list[tuple[int, int, int]], int]:
        """The elements (tag, start, end) of the item value at ``pos``, and the offset past it
        (past its delimiter when of undefined length)."""
        stop = None if length == UNDEFINED else pos + length
        if stop is not None and stop > len(self.buf):
            raise _Unexpected("truncated")
        out = []
        while stop is None or pos < stop:
            tag = self.element(pos)[0]
            if tag == ITEM_END and stop is None:
                return out, pos + 8
            if tag >> 16 == 0xFFFE:
                raise _Unexpected("delimiter out of place")
            end = self.end_of(pos)
            out.append((tag, pos, end))
            pos = end
        if pos != stop:
            raise _Unexpected("element overruns its item")
        return out, pos


def _sequence(walk: _Walk, pos: int, keep: frozenset[int], out: list[bytes]) -> int:
    """The SQ element at ``pos`` re-encoded with undefined lengths, each item holding only the
    elements whose tags are in ``keep``; returns the offset past the element."""
    buf, order = walk.buf, walk.order
    tag, head, length, _ = walk.element(pos)
    group, elem = tag >> 16, tag & 0xFFFF
    if walk.explicit:
        out.append(struct.pack(order + "HH2sHL", group, elem, b"SQ", 0, UNDEFINED))
    else:
        out.append(struct.pack(order + "HHL", group, elem, UNDEFINED))
    item_open = struct.pack(order + "HHL", 0xFFFE, 0xE000, UNDEFINED)
    item_close = struct.pack(order + "HHL", 0xFFFE, 0xE00D, 0)
    items, end = walk.items(pos + head, length)
    for elements in items:
        out.append(item_open)
        out.extend(buf[start:stop] for t, start, stop in elements if t in keep)
        out.append(item_close)
    out.append(struct.pack(order + "HHL", 0xFFFE, 0xE0DD, 0))
    return end


def pruned_header(buf: bytes, keep: frozenset[int]) -> tuple[bytes, int | None] | None:
    """File meta plus the top-level elements in ``keep`` (functional group sequences cut down to
    the groups the loader reads), and the offset of the pixel data element in ``buf`` (None
    when the data set ends without one); None when the walk meets anything unexpected or
    ``buf`` ends before the pixel data."""
    try:
        found = _dataset_start(buf)
        if found is None:
            return None
        start, syntax = found
        uid = UID(syntax)
        if not uid.is_transfer_syntax or uid.is_deflated:
            return None
        walk = _Walk(buf, explicit=not uid.is_implicit_VR, little=uid.is_little_endian)
        out, pos, groups = [buf[:start]], start, _group_tags()
        while pos < len(buf):
            tag, _, _, vr = walk.element(pos)
            if tag in PIXEL_TAGS:
                return b"".join(out), pos
            if tag >> 16 == 0xFFFE:
                raise _Unexpected("delimiter at top level")
            if tag in (SHARED, PER_FRAME) and vr in (None, b"SQ"):
                pos = _sequence(walk, pos, groups, out)
                continue
            end = walk.end_of(pos)
            if tag in keep:
                out.append(buf[pos:end])
            pos = end
        return None   # no pixel data, or not within buf: pydicom reads the file as it is
    except (_Unexpected, struct.error, ValueError, UnicodeError, RecursionError):
        return None
