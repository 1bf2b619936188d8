"""Many idle AMQP connections at once, for load: each does the handshake with raw frames
(PLAIN guest/guest, the given heartbeat, a client-provided name), then sends a heartbeat
every T/2 and reads and drops whatever warren sends, as a healthy idle client does. All of
them run on one asyncio loop, on a thread of its own."""

import asyncio
import struct
import threading


def _shortstr(s: bytes) -> bytes:
    return bytes([len(s)]) + s


def _longstr(s: bytes) -> bytes:
    return struct.pack(">I", len(s)) + s


def _method(class_id: int, method_id: int, args: bytes, channel: int = 0) -> bytes:
    payload = struct.pack(">HH", class_id, method_id) + args
    return struct.pack(">BHI", 1, channel, len(payload)) + payload + b"\xce"


HEARTBEAT = b"\x08\x00\x00\x00\x00\x00\x00\xce"


async def _frame(reader):
    kind, channel, size = struct.unpack(">BHI", await reader.readexactly(7))
    payload = await reader.readexactly(size + 1)
    return kind, payload[:-1]


async def _method_frame(reader):
    while True:
        kind, payload = await _frame(reader)
        if kind == 1:
            return struct.unpack(">HH", payload[:4])


class Crowd:
    def __init__(self, port, count, heartbeat, prefix="crowd"):
        self.port, self.count, self.heartbeat = port, count, heartbeat
        self.names = [f"{prefix}-{i:04d}" for i in range(count)]
        self.closed = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.tasks = []

    async def _one(self, name, opened):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(b"AMQP\x00\x00\x09\x01")
        await _method_frame(reader)  # connection.start
        props = _shortstr(b"connection_name") + b"S" + _longstr(name.encode())
        writer.write(_method(10, 11, _longstr(props) + _shortstr(b"PLAIN") + _longstr(b"\0guest\0guest")
                             + _shortstr(b"en_US")))
        await _method_frame(reader)  # connection.tune
        writer.write(_method(10, 31, struct.pack(">HIH", 2047, 131072, self.heartbeat)))
        writer.write(_method(10, 40, _shortstr(b"/") + _shortstr(b"") + b"\x00"))
        await _method_frame(reader)  # connection.open-ok
        opened.set_result(None)

        async def beat():
            while True:
                await asyncio.sleep(self.heartbeat / 2)
                writer.write(HEARTBEAT)
        beating = asyncio.ensure_future(beat())
        try:
            while await reader.read(4096):
                pass
        finally:
            beating.cancel()
            self.closed += 1

    async def _open_all(self):
        # 50 handshakes in flight at a time.
        gate = asyncio.Semaphore(50)

        async def open_one(name):
            async with gate:
                opened = self.loop.create_future()
                self.tasks.append(asyncio.ensure_future(self._one(name, opened)))
                await opened
        await asyncio.gather(*(open_one(n) for n in self.names))

    def dropped(self):
        return self.closed

    def __enter__(self):
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._open_all(), self.loop).result(timeout=60)
        return self

    def __exit__(self, *exc):
        async def stop():
            for t in self.tasks:
                t.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
