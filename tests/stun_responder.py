"""A STUN server for tests (RFC 8489 Binding only): answers each Binding request with the address it
came from. A server started with ``--ice-server stun:...`` gathers against it at once instead of
waiting out aioice's 5 s timeout, and the WHEP ``Link`` headers point at something that answers."""

from __future__ import annotations

import asyncio
from typing import Any

from aioice import stun


class StunResponder(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: Any = None  # the loop's datagram transport
        self.requests = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            request = stun.parse_message(data)
        except ValueError:
            return
        if request.message_method != stun.Method.BINDING or request.message_class != stun.Class.REQUEST:
            return
        self.requests += 1
        response = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.RESPONSE,
                                transaction_id=request.transaction_id)
        response.attributes["XOR-MAPPED-ADDRESS"] = (addr[0], addr[1])
        self.transport.sendto(bytes(response), addr)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[1]


async def start_stun(host: str) -> StunResponder:
    _, protocol = await asyncio.get_running_loop().create_datagram_endpoint(StunResponder, local_addr=(host, 0))
    return protocol
