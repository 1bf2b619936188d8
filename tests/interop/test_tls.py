"""amqps with real Python clients: pika and py-amqp over TLS with and without a client
certificate, EXTERNAL authentication from the certificate, the management API's view of a
TLS connection, and the heartbeat window over TLS (a pika client whose bytes stop counting
is dropped 2T..3T later, as over TCP). The broker is the real binary, started with
`--tls-self-signed` through warren_broker.Broker.start(tls=True)."""

import os
import ssl
import time

import amqp
import amqp.sasl
import pika
import pytest
import warren_broker

from conftest import DEFAULT_BIN

EXTERNAL_TOO = "auth_mechanisms.1 = PLAIN\nauth_mechanisms.2 = AMQPLAIN\nauth_mechanisms.3 = EXTERNAL\n"


@pytest.fixture
def tls_broker(tmp_path):
    binary = os.environ.get("WARREN_BIN") or str(DEFAULT_BIN)
    b = warren_broker.Broker.start(tls=True, config=EXTERNAL_TOO, binary=binary, workdir=tmp_path, heartbeat=1)
    yield b
    b.stop()


def pika_params(broker, context, **kw):
    return pika.ConnectionParameters(host="localhost", port=broker.amqps_port,
                                     ssl_options=pika.SSLOptions(context, "localhost"), **kw)


def round_trip(channel, queue):
    channel.queue_declare(queue)
    channel.basic_publish("", queue, b"over tls")
    for _ in range(50):
        method, _, body = channel.basic_get(queue, auto_ack=True)
        if method:
            return body
        time.sleep(0.02)
    return None


def the_only_connection(broker):
    shown = broker.connections()
    assert len(shown) == 1, shown
    return shown[0]


def test_pika_over_tls_without_a_client_certificate(tls_broker):
    context = tls_broker.tls.ssl_context(client_certificate=False)
    with pika.BlockingConnection(pika_params(tls_broker, context)) as conn:
        assert round_trip(conn.channel(), "pika-tls") == b"over tls"
        c = the_only_connection(tls_broker)
        assert c["ssl"] is True and c["ssl_protocol"] == "tlsv1.3"
        assert c["peer_cert_subject"] is None and c["auth_mechanism"] == "PLAIN"


def test_pika_with_a_client_certificate_logs_in_with_external(tls_broker):
    context = tls_broker.tls.ssl_context()
    params = pika_params(tls_broker, context, credentials=pika.credentials.ExternalCredentials())
    with pika.BlockingConnection(params) as conn:
        assert round_trip(conn.channel(), "pika-external") == b"over tls"
        c = the_only_connection(tls_broker)
        assert (c["auth_mechanism"], c["user"]) == ("EXTERNAL", "guest")
        assert c["peer_cert_subject"] == "O=warren,CN=guest"


def test_py_amqp_over_tls_with_and_without_a_client_certificate_and_with_external(tls_broker):
    host = f"localhost:{tls_broker.amqps_port}"
    # py-amqp picks the first of its mechanisms the server offers: EXTERNAL
    # once it is offered (a verified certificate), AMQPLAIN otherwise.
    for with_cert, auth, mechanism in [
        (False, (), "AMQPLAIN"),
        (True, (), "EXTERNAL"),
        (True, (amqp.sasl.PLAIN("guest", "guest"),), "PLAIN"),
    ]:
        # py-amqp takes its TLS settings as a dict of wrap_socket's arguments.
        files = tls_broker.tls
        sslopts = {"ca_certs": str(files.ca_certificate), "cert_reqs": ssl.CERT_REQUIRED, "server_hostname": "localhost"}
        if with_cert:
            sslopts.update(certfile=str(files.client_certificate), keyfile=str(files.client_key))
        conn = amqp.Connection(host=host, ssl=sslopts, authentication=auth)
        conn.connect()
        try:
            ch = conn.channel()
            ch.queue_declare("py-amqp-tls", auto_delete=False)
            ch.basic_publish(amqp.Message("over tls"), routing_key="py-amqp-tls")
            got = None
            for _ in range(50):
                got = ch.basic_get("py-amqp-tls", no_ack=True)
                if got:
                    break
                time.sleep(0.02)
            assert got is not None and got.body == "over tls"
            c = the_only_connection(tls_broker)
            assert c["auth_mechanism"] == mechanism, c
            assert c["peer_cert_subject"] == ("O=warren,CN=guest" if with_cert else None), c
        finally:
            events = tls_broker.events()
            conn.close()
        events.wait_for(lambda e: e["type"] == "connection.closed", timeout=5)


def test_a_client_that_does_not_trust_the_authority_is_refused_and_the_broker_goes_on(tls_broker):
    untrusting = ssl.create_default_context()  # the system's authorities: not the test one
    # pika hands on the ssl module's own error.
    with pytest.raises((pika.exceptions.AMQPConnectionError, ssl.SSLCertVerificationError)):
        pika.BlockingConnection(pika_params(tls_broker, untrusting, connection_attempts=1))
    tls_broker.wait_for_log("refused: TLS handshake failed")
    with pika.BlockingConnection(pika_params(tls_broker, tls_broker.tls.ssl_context())) as conn:
        assert round_trip(conn.channel(), "after-refusal") == b"over tls"


def test_a_pika_client_over_tls_whose_bytes_stop_counting_is_dropped_between_2t_and_3t(tls_broker):
    params = pika_params(tls_broker, tls_broker.tls.ssl_context(), heartbeat=1,
                         client_properties={"connection_name": "tls-heartbeats"})
    conn = pika.BlockingConnection(params)
    conn.process_data_events(time_limit=1.2)  # heartbeats both ways for a while
    events = tls_broker.events()
    tls_broker.connection("tls-heartbeats").ignore_client()
    ignored_at = time.monotonic()
    dropped = events.wait_for(lambda e: e["type"] == "heartbeat.timeout", timeout=10)
    after = time.monotonic() - ignored_at
    # The last counted byte came at most T/2 (a pika heartbeat) before the fault.
    assert 2 * 1 - 0.5 - 0.1 <= after <= 3 * 1 + 0.3, after
    assert dropped["timeout"] == 1
    assert tls_broker.wait_for_log("missed heartbeats from client, timeout: 1s")
    with pytest.raises(pika.exceptions.AMQPError):
        conn.process_data_events(time_limit=3)
    assert all(c.get("user_provided_name") != "tls-heartbeats" for c in tls_broker.connections())
