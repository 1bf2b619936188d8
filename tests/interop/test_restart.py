"""A broker restart seen by a client with automatic recovery: aio-pika's connect_robust
reconnects by itself after warren restarts (as after a RabbitMQ node restart), declares its
queues again and finds the persistent messages of its durable queue; transient messages and
the contents of a non-durable queue are gone. A crash (connections reset, no close frame) is
recovered from the same way."""

import asyncio

import aio_pika
import pytest


async def recovery(broker, crash):
    conn = await aio_pika.connect_robust(broker.url, reconnect_interval=0.2)
    reconnected = asyncio.Event()
    conn.reconnect_callbacks.add(lambda *args: reconnected.set())
    ch = await conn.channel()
    orders = await ch.declare_queue("orders", durable=True)
    scratch = await ch.declare_queue("scratch")
    for body, mode in ((b"kept", aio_pika.DeliveryMode.PERSISTENT), (b"lost", aio_pika.DeliveryMode.NOT_PERSISTENT)):
        await ch.default_exchange.publish(aio_pika.Message(body, delivery_mode=mode), routing_key="orders")
    await ch.default_exchange.publish(aio_pika.Message(b"lost too", delivery_mode=2), routing_key="scratch")

    report = await asyncio.get_running_loop().run_in_executor(None, lambda: broker.restart(0.3, crash))
    assert report["kept"]["messages"] == 1, report
    await asyncio.wait_for(reconnected.wait(), timeout=10)

    got = await orders.get(no_ack=True)
    assert got.body == b"kept" and not got.redelivered
    assert await orders.get(no_ack=True, fail=False) is None
    # connect_robust declared `scratch` again: it exists, empty.
    assert await scratch.get(no_ack=True, fail=False) is None
    await conn.close()


@pytest.mark.parametrize("crash", [False, True], ids=["restart", "crash"])
def test_aio_pika_robust_connection_recovers_its_durable_work(broker, crash):
    asyncio.run(asyncio.wait_for(recovery(broker, crash), timeout=30))
