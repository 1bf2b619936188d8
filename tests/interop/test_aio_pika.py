"""aio-pika 10.2.1 / aiormq 7.2.4 against the real warren binary.

aiormq reads server_properties["capabilities"] directly and opens channels with publisher
confirms, so every publish here waits for the broker's basic.ack (or nack/return).
Proves that, as on RabbitMQ:
- publishes are confirmed one by one and in bulk (many in flight), properties and headers
  round-trip, a consumer gets them in order and acks;
- an unroutable mandatory publish comes back as basic.return (aio-pika raises DeliveryError);
- nack(requeue=True) redelivers with redelivered=True; reject(requeue=False) drops;
- dead-lettering: reject(requeue=False) on a queue with x-dead-letter-exchange /
  x-dead-letter-routing-key republishes there with RabbitMQ's x-death header;
- TTL: x-message-ttl and per-message expiration drop expired messages (never delivered);
  expired messages are dead-lettered with reason "expired" (the delay-queue pattern);
- x-max-length with x-overflow=reject-publish: the publish over the limit is nacked;
- x-expires deletes an unused queue; a headers exchange routes with x-match all/any;
- tx: publishes wait for commit, rollback drops them; an ack rolled back is undone.

Set WARREN_INTEROP_EXTERNAL_URL=amqp://guest:guest@127.0.0.1:PORT/%2f to run these against
another broker instead of a warren started here: all of them pass against RabbitMQ 3.10.8,
which is how their expectations were checked.
"""

import asyncio
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import aio_pika
import aiormq
import pytest



@pytest.fixture
def url(request):
    import os

    ext = os.environ.get("WARREN_INTEROP_EXTERNAL_URL")
    if ext:
        return ext
    return request.getfixturevalue("broker").url


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


def uniq(prefix):
    return f"interop.aio.{prefix}.{uuid.uuid4().hex[:8]}"


async def get_eventually(queue, timeout=5.0, no_ack=True):
    deadline = time.monotonic() + timeout
    while True:
        msg = await queue.get(no_ack=no_ack, fail=False)
        if msg is not None:
            return msg
        if time.monotonic() >= deadline:
            pytest.fail(f"no message on {queue.name} within {timeout}s")
        await asyncio.sleep(0.05)


def test_publish_confirms_consume_ack(url):
    async def main():
        conn = await aio_pika.connect(url)
        async with conn:
            assert conn.transport.connection.server_capabilities["publisher_confirms"] is True
            ch = await conn.channel()  # publisher_confirms=True is aio-pika's default
            q = await ch.declare_queue(uniq("confirm"))
            headers = {
                "s": "ünï",
                "i": 2**40,
                "neg": -7,
                "f": 1.5,
                "b": True,
                "n": None,
                "l": [1, "two", None, [3]],
                "t": {"nested": {"deep": "yes"}},
                "d": Decimal("3.14"),
                "ts": datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc),
                "bytes": bytearray(b"\x00\x01\xff"),
            }
            props = dict(
                content_type="application/json",
                content_encoding="utf-8",
                headers=headers,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                priority=3,
                correlation_id="corr-1",
                reply_to="reply.q",
                expiration=60,
                message_id="mid-1",
                timestamp=datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
                type="t1",
                user_id="guest",
                app_id="interop",
            )
            confirm = await ch.default_exchange.publish(aio_pika.Message(b"first", **props), routing_key=q.name)
            assert isinstance(confirm, aiormq.spec.Basic.Ack)
            # many in flight at once: gather waits for every confirm
            bodies = [f"m{i}".encode() * (1 + i * 300) for i in range(60)]  # up to ~100 KB, multi-frame
            confirms = await asyncio.gather(
                *(ch.default_exchange.publish(aio_pika.Message(b), routing_key=q.name) for b in bodies)
            )
            assert all(isinstance(c, aiormq.spec.Basic.Ack) for c in confirms)

            got = []
            async with q.iterator() as it:
                async for msg in it:
                    got.append(msg)
                    await msg.ack()
                    if len(got) == 1 + len(bodies):
                        break
            first = got[0]
            assert first.body == b"first"
            assert first.content_type == "application/json"
            assert first.correlation_id == "corr-1"
            assert first.reply_to == "reply.q"
            assert first.message_id == "mid-1"
            assert first.type == "t1" and first.app_id == "interop" and first.user_id == "guest"
            assert first.priority == 3 and first.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
            assert first.timestamp == datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
            assert first.redelivered is False
            h = dict(first.headers)
            assert h["s"] == "ünï" and h["i"] == 2**40 and h["neg"] == -7 and h["f"] == 1.5
            assert h["b"] is True and h["n"] is None and h["d"] == Decimal("3.14")
            assert list(h["l"]) == [1, "two", None, [3]] and h["t"] == {"nested": {"deep": "yes"}}
            assert h["ts"] == datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
            assert bytes(h["bytes"]) == b"\x00\x01\xff"
            assert [m.body for m in got[1:]] == bodies
            assert [m.delivery_tag for m in got] == list(range(1, len(got) + 1))
            q2 = await ch.declare_queue(q.name, passive=True)
            assert q2.declaration_result.message_count == 0
            assert await q.delete() is not None

    run(main())


def test_unroutable_mandatory_publish_is_returned(url):
    async def main():
        async with await aio_pika.connect(url) as conn:
            ch = await conn.channel(on_return_raises=True)
            with pytest.raises(aio_pika.exceptions.DeliveryError) as e:
                await ch.default_exchange.publish(aio_pika.Message(b"x"), routing_key=uniq("nowhere"), mandatory=True)
            assert e.value.message.body == b"x"
            # and the channel is still usable
            q = await ch.declare_queue(uniq("after-return"), auto_delete=True)
            await ch.default_exchange.publish(aio_pika.Message(b"y"), routing_key=q.name)
            assert (await get_eventually(q)).body == b"y"

    run(main())


def test_nack_requeue_redelivers_and_reject_drops(url):
    async def main():
        async with await aio_pika.connect(url) as conn:
            ch = await conn.channel()
            q = await ch.declare_queue(uniq("nack"), auto_delete=True)
            await ch.default_exchange.publish(aio_pika.Message(b"a"), routing_key=q.name)
            m = await get_eventually(q, no_ack=False)
            assert m.redelivered is False
            await m.nack(requeue=True)
            m = await get_eventually(q, no_ack=False)
            assert m.body == b"a" and m.redelivered is True
            await m.reject(requeue=False)
            await asyncio.sleep(0.2)
            assert await q.get(fail=False) is None

    run(main())


def assert_x_death(msg, reason, queue, exchange, routing_keys):
    h = dict(msg.headers)
    deaths = h["x-death"]
    assert len(deaths) == 1, deaths
    d = dict(deaths[0])
    assert d["count"] == 1
    assert d["reason"] == reason
    assert d["queue"] == queue
    assert d["exchange"] == exchange
    assert list(d["routing-keys"]) == routing_keys
    assert isinstance(d["time"], datetime)
    assert h["x-first-death-reason"] == reason
    assert h["x-first-death-queue"] == queue
    assert h["x-first-death-exchange"] == exchange


def test_dead_letter_on_reject(url):
    async def main():
        async with await aio_pika.connect(url) as conn:
            ch = await conn.channel()
            dlx = await ch.declare_exchange(uniq("dlx"), aio_pika.ExchangeType.DIRECT, auto_delete=True)
            dead = await ch.declare_queue(uniq("dead"), auto_delete=True)
            await dead.bind(dlx, routing_key="dead")
            src = await ch.declare_queue(
                uniq("src"),
                auto_delete=True,
                arguments={"x-dead-letter-exchange": dlx.name, "x-dead-letter-routing-key": "dead"},
            )
            await ch.default_exchange.publish(
                aio_pika.Message(b"doomed", headers={"mine": "kept"}, message_id="m-1"), routing_key=src.name
            )
            m = await get_eventually(src, no_ack=False)
            await m.reject(requeue=False)
            d = await get_eventually(dead)
            assert d.body == b"doomed" and d.message_id == "m-1"
            assert d.routing_key == "dead" and d.exchange == dlx.name
            assert dict(d.headers)["mine"] == "kept"
            assert_x_death(d, "rejected", src.name, "", [src.name])

    run(main())


def test_queue_message_ttl_drops_expired(url):
    async def main():
        async with await aio_pika.connect(url) as conn:
            ch = await conn.channel()
            q = await ch.declare_queue(uniq("ttl"), auto_delete=True, arguments={"x-message-ttl": 200})
            await ch.default_exchange.publish(aio_pika.Message(b"old"), routing_key=q.name)
            await asyncio.sleep(0.5)
            await ch.default_exchange.publish(aio_pika.Message(b"new"), routing_key=q.name)
            assert (await get_eventually(q)).body == b"new"
            assert await q.get(fail=False) is None

    run(main())


def test_per_message_expiration_drops_expired(url):
    async def main():
        async with await aio_pika.connect(url) as conn:
            ch = await conn.channel()
            q = await ch.declare_queue(uniq("exp"), auto_delete=True)
            await ch.default_exchange.publish(aio_pika.Message(b"short", expiration=0.2), routing_key=q.name)
            await ch.default_exchange.publish(aio_pika.Message(b"long", expiration=30), routing_key=q.name)
            await asyncio.sleep(0.5)
            m = await get_eventually(q)
            assert m.body == b"long" and m.expiration == 30
            assert await q.get(fail=False) is None

    run(main())


def test_ttl_dead_letter_delay_queue(url):
    """The delay-queue pattern: nobody consumes `wait`; its messages expire after 300 ms into a
    dead-letter exchange, and a consumer on `work` gets them with x-death reason "expired"."""

    async def main():
        async with await aio_pika.connect(url) as conn:
            ch = await conn.channel()
            dlx = await ch.declare_exchange(uniq("delay-dlx"), aio_pika.ExchangeType.FANOUT, auto_delete=True)
            work = await ch.declare_queue(uniq("work"), auto_delete=True)
            await work.bind(dlx)
            wait = await ch.declare_queue(
                uniq("wait"), auto_delete=True, arguments={"x-message-ttl": 300, "x-dead-letter-exchange": dlx.name}
            )
            t0 = time.monotonic()
            await ch.default_exchange.publish(aio_pika.Message(b"later"), routing_key=wait.name)
            got = asyncio.get_running_loop().create_future()

            async def on_message(msg):
                async with msg.process():
                    if not got.done():
                        got.set_result((time.monotonic() - t0, msg))

            await work.consume(on_message)
            elapsed, m = await asyncio.wait_for(got, 5)
            assert m.body == b"later"
            assert elapsed >= 0.28, elapsed
            assert m.routing_key == wait.name  # no x-dead-letter-routing-key: the original key
            assert_x_death(m, "expired", wait.name, "", [wait.name])

    run(main())


def test_max_length_reject_publish_nacks(url):
    async def main():
        async with await aio_pika.connect(url) as conn:
            ch = await conn.channel()
            q = await ch.declare_queue(
                uniq("maxlen"), auto_delete=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
            )
            ok = await ch.default_exchange.publish(aio_pika.Message(b"1"), routing_key=q.name)
            assert isinstance(ok, aiormq.spec.Basic.Ack)
            with pytest.raises(aio_pika.exceptions.DeliveryError) as e:
                await ch.default_exchange.publish(aio_pika.Message(b"2"), routing_key=q.name)
            assert isinstance(e.value.frame, aiormq.spec.Basic.Nack)
            assert (await get_eventually(q)).body == b"1"

    run(main())


def test_x_expires_deletes_unused_queue(url):
    """Celery's pidbox reply and rpc:// result queues rely on x-expires."""

    async def main():
        async with await aio_pika.connect(url) as conn:
            ch = await conn.channel()
            name = uniq("expires")
            await ch.declare_queue(name, arguments={"x-expires": 300})
            await ch.declare_queue(name, passive=True)  # still there (passive declare is no "use")
            await asyncio.sleep(0.8)
            with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
                await ch.declare_queue(name, passive=True)

    run(main())


def test_headers_exchange_routing(url):
    async def main():
        async with await aio_pika.connect(url) as conn:
            ch = await conn.channel()
            ex = await ch.declare_exchange(uniq("hdr"), aio_pika.ExchangeType.HEADERS, auto_delete=True)
            q_all = await ch.declare_queue(uniq("all"), auto_delete=True)
            q_any = await ch.declare_queue(uniq("any"), auto_delete=True)
            await q_all.bind(ex, arguments={"x-match": "all", "format": "pdf", "type": "report"})
            await q_any.bind(ex, arguments={"x-match": "any", "format": "pdf", "type": "report"})
            await ex.publish(aio_pika.Message(b"both", headers={"format": "pdf", "type": "report"}), routing_key="")
            await ex.publish(aio_pika.Message(b"one", headers={"format": "pdf", "type": "log"}), routing_key="")
            await ex.publish(aio_pika.Message(b"none", headers={"format": "zip"}), routing_key="")
            assert (await get_eventually(q_all)).body == b"both"
            assert [(await get_eventually(q_any)).body for _ in range(2)] == [b"both", b"one"]
            await asyncio.sleep(0.1)
            assert await q_all.get(fail=False) is None and await q_any.get(fail=False) is None

    run(main())


def test_transaction_commit_and_rollback(url):
    async def main():
        async with await aio_pika.connect(url) as conn:
            ch = await conn.channel(publisher_confirms=False)  # tx and confirms exclude each other
            q = await ch.declare_queue(uniq("tx"))
            tx = ch.transaction()
            await tx.select()
            await ch.default_exchange.publish(aio_pika.Message(b"rolled back"), routing_key=q.name)
            await tx.rollback()
            await ch.default_exchange.publish(aio_pika.Message(b"committed"), routing_key=q.name)
            await asyncio.sleep(0.1)
            assert await q.get(fail=False) is None  # not before commit
            await tx.commit()
            m = await get_eventually(q, no_ack=False)
            assert m.body == b"committed"
            # an ack inside a rolled-back transaction is discarded: the message stays unacked and
            # comes back (redelivered) when its channel closes
            await m.ack()
            await tx.rollback()
            await ch.close()
            ch2 = await conn.channel(publisher_confirms=False)
            q2 = await ch2.declare_queue(q.name, passive=True)
            again = await get_eventually(q2, no_ack=False)
            assert again.body == b"committed" and again.redelivered is True
            # and a committed ack removes it
            tx2 = ch2.transaction()
            await tx2.select()
            await again.ack()
            await tx2.commit()
            await ch2.close()
            ch3 = await conn.channel()
            assert (await ch3.declare_queue(q.name, passive=True)).declaration_result.message_count == 0

    run(main())


def test_single_active_consumer(url):
    async def main():
        async with await aio_pika.connect(url) as conn:
            ch = await conn.channel()
            q = await ch.declare_queue(uniq("sac"), auto_delete=True, arguments={"x-single-active-consumer": True})
            got = {"a": [], "b": []}

            def consumer(key):
                async def on_message(msg):
                    got[key].append(msg.body)
                    await msg.ack()

                return on_message

            tag_a = await q.consume(consumer("a"))
            await q.consume(consumer("b"))
            for i in range(5):
                await ch.default_exchange.publish(aio_pika.Message(f"{i}".encode()), routing_key=q.name)
            deadline = time.monotonic() + 5
            while len(got["a"]) < 5 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert got == {"a": [b"0", b"1", b"2", b"3", b"4"], "b": []}
            # the active consumer goes: the next one takes over
            await q.cancel(tag_a)
            await ch.default_exchange.publish(aio_pika.Message(b"5"), routing_key=q.name)
            deadline = time.monotonic() + 5
            while not got["b"] and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert got["b"] == [b"5"]

    run(main())


def test_exclusive_queue_of_another_connection_is_locked(url):
    async def main():
        async with await aio_pika.connect(url) as owner, await aio_pika.connect(url) as other:
            q = await (await owner.channel()).declare_queue(uniq("excl"), exclusive=True)
            ch = await other.channel()
            with pytest.raises(aiormq.exceptions.ChannelLockedResource) as e:
                await ch.declare_queue(q.name, passive=True)
            assert "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue" in str(e.value)
        # the owner closed: the queue is gone
        async with await aio_pika.connect(url) as conn:
            with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
                await (await conn.channel()).declare_queue(q.name, passive=True)

    run(main())
