"""The trickle ICE SDP fragment (RFC 8840, ``application/trickle-ice-sdpfrag``) a WHEP player PATCHes.

    a=ice-ufrag:EsAw               session level: the ICE credentials the candidates belong to
    a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1
    m=audio 9 RTP/AVP 0            one section per media line the candidates are for
    a=mid:0
    a=candidate:1387637174 1 udp 2122260223 10.0.0.2 61764 typ host generation 0
    a=end-of-candidates            (session or media level) no more candidates will come

Parsing only: the candidates are checked for the fields every ICE candidate has (foundation,
component, transport, priority, address, port, ``typ`` type), the rest is left to the ICE agent.
"""

from __future__ import annotations

from dataclasses import dataclass

from avatarstream.realtime.errors import BadRequest

MAX_FRAGMENT_BYTES = 16 * 1024
MAX_CANDIDATES = 64


@dataclass(frozen=True)
class TrickleCandidate:
    """One ``a=candidate:`` line: its value (after ``candidate:``) and the media line it is for."""

    sdp: str
    mid: str | None  # the section's a=mid (None: the fragment names no mid)
    mline_index: int  # the section's place in the fragment (0 for a session-level candidate)


@dataclass(frozen=True)
class TrickleFragment:
    ufrag: str | None
    pwd: str | None
    candidates: tuple[TrickleCandidate, ...]
    end_of_candidates: bool


def _check_candidate(value: str) -> None:
    bits = value.split()
    if len(bits) < 8 or bits[6] != "typ":
        raise BadRequest(f"malformed ICE candidate {value[:80]!r}: expected "
                         "'foundation component transport priority address port typ type'")
    if not (bits[1].isdigit() and bits[3].isdigit() and bits[5].isdigit() and int(bits[5]) < 65536):
        raise BadRequest(f"malformed ICE candidate {value[:80]!r}: component, priority and port must be numbers")


def parse_sdpfrag(text: str) -> TrickleFragment:
    """Read a trickle ICE fragment; BadRequest (400) if it is not one."""
    if len(text.encode()) > MAX_FRAGMENT_BYTES:
        raise BadRequest(f"trickle ICE fragment is larger than {MAX_FRAGMENT_BYTES} bytes")
    ufrag = pwd = None
    mid: str | None = None
    mline = -1
    candidates: list[TrickleCandidate] = []
    end = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if len(line) < 2 or line[1] != "=" or not line.isascii():
            raise BadRequest(f"malformed trickle ICE fragment line {line[:80]!r} (expected 'x=...')")
        kind, value = line[0], line[2:]
        if kind == "m":
            mline, mid = mline + 1, None
        elif kind != "a":
            continue  # other SDP lines say nothing about candidates
        elif value.startswith("ice-ufrag:"):
            ufrag = value[len("ice-ufrag:"):]
        elif value.startswith("ice-pwd:"):
            pwd = value[len("ice-pwd:"):]
        elif value.startswith("mid:"):
            mid = value[len("mid:"):]
        elif value == "end-of-candidates":
            end = True
        elif value.startswith("candidate:"):
            _check_candidate(value[len("candidate:"):])
            candidates.append(TrickleCandidate(value[len("candidate:"):], mid, max(mline, 0)))
            if len(candidates) > MAX_CANDIDATES:
                raise BadRequest(f"more than {MAX_CANDIDATES} candidates in one trickle ICE fragment")
    if not candidates and not end and ufrag is None:
        raise BadRequest("the trickle ICE fragment has no candidate, no end-of-candidates and no ICE credentials")
    return TrickleFragment(ufrag, pwd, tuple(candidates), end)


def sdp_ice_ufrag(sdp: str) -> str | None:
    """The first ``a=ice-ufrag`` of a session description (the ICE session its candidates belong to)."""
    for line in sdp.splitlines():
        if line.strip().startswith("a=ice-ufrag:"):
            return line.strip()[len("a=ice-ufrag:"):]
    return None
