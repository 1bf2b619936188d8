//! The HTTP control API over real HTTP: management-API fields, basic auth,
//! forced close, fault injection and events by long polling.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use common::http::{basic, call, call_with_head, get, GUEST};
use common::{publish_frames, RawClient};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::protocol::Method;
use warren::EmbeddedBroker;

const WAIT: Duration = Duration::from_secs(5);
fn encode(name: &str) -> String {
    name.replace(' ', "%20").replace('>', "%3E").replace('/', "%2F")
}

#[tokio::test]
async fn management_endpoints_speak_rabbitmqs_json() {
    let broker = EmbeddedBroker::builder().http(true).start().await.unwrap();
    let http = broker.http_addr().unwrap();
    assert_eq!(call(http, "GET", "/api/overview", None, None).await.0, 401);
    assert_eq!(call(http, "GET", "/api/overview", None, Some("Z3Vlc3Q6bm9wZQ==")).await.0, 401);

    let mut client = RawClient::open(broker.addr(), 0).await;
    client.declare_queue("q").await;
    let mut frames = BytesMut::new();
    publish_frames(&mut frames, "q", false, b"m");
    client.send_raw(&frames).await;
    client.send(1, warren::protocol::methods::basic::Qos::default()).await;
    client.expect_method(WAIT).await;

    let overview = get(http, "/api/overview").await;
    assert_eq!(overview["product_name"], "warren");
    assert_eq!(overview["object_totals"]["connections"], 1);
    assert_eq!(overview["queue_totals"]["messages_ready"], 1);

    let connections = get(http, "/api/connections").await;
    let c = &connections[0];
    assert_eq!(
        (c["user"].as_str(), c["vhost"].as_str(), c["state"].as_str()),
        (Some("guest"), Some("/"), Some("running"))
    );
    assert_eq!(c["timeout"], 0);
    assert!(c["recv_oct"].as_u64().unwrap() > 0);

    let q = get(http, "/api/queues/%2F/q").await;
    assert_eq!(
        (q["messages"].as_u64(), q["messages_ready"].as_u64(), q["consumers"].as_u64()),
        (Some(1), Some(1), Some(0))
    );
    assert_eq!(get(http, "/api/queues").await.as_array().unwrap().len(), 1);
    assert_eq!(call(http, "GET", "/api/queues/%2F/nope", None, Some(GUEST)).await.0, 404);
    let exchanges = get(http, "/api/exchanges").await;
    assert!(exchanges.as_array().unwrap().iter().any(|x| x["name"] == "amq.topic" && x["type"] == "topic"));

    let name = c["name"].as_str().unwrap().to_string();
    let (status, _) = call(http, "DELETE", &format!("/api/connections/{}", encode(&name)), None, Some(GUEST)).await;
    assert_eq!(status, 204);
    match client.expect_method(WAIT).await {
        (0, Method::ConnectionClose(close)) => {
            assert_eq!(close.reply_code, 320);
            assert_eq!(close.reply_text.to_string(), "CONNECTION_FORCED - Closed via management plugin");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn faults_alarms_and_events_over_http() {
    let broker = EmbeddedBroker::builder().http(true).start().await.unwrap();
    let http = broker.http_addr().unwrap();
    let mut client = RawClient::open(broker.addr(), 0).await;
    client.declare_queue("q").await;

    let events = get(http, "/api/warren/events?since=0&timeout_ms=2000").await;
    let opened = events["events"].as_array().unwrap().iter().find(|e| e["type"] == "connection.opened").cloned();
    let opened = opened.expect("connection.opened in the log");
    let name = opened["connection"].as_str().unwrap().to_string();
    let last = events["last"].as_u64().unwrap();

    let (status, _) = call(
        http,
        "POST",
        &format!("/api/warren/connections/{}/faults", encode(&name)),
        Some(r#"{"block": true}"#),
        Some(GUEST),
    )
    .await;
    assert_eq!(status, 204);
    let mut frames = BytesMut::new();
    publish_frames(&mut frames, "q", false, b"m");
    client.send_raw(&frames).await;
    assert!(matches!(client.expect_method(WAIT).await, (0, Method::ConnectionBlocked(_))));
    let events = get(http, &format!("/api/warren/events?since={last}&timeout_ms=2000")).await;
    assert!(events["events"].as_array().unwrap().iter().any(|e| e["type"] == "connection.blocked"), "{events}");

    call(
        http,
        "POST",
        &format!("/api/warren/connections/{}/faults", encode(&name)),
        Some(r#"{"block": false}"#),
        Some(GUEST),
    )
    .await;
    assert!(matches!(client.expect_method(WAIT).await, (0, Method::ConnectionUnblocked(_))));
    assert_eq!(call(http, "PUT", "/api/warren/alarms/memory", None, Some(GUEST)).await.0, 204);
    assert!(get(http, "/api/overview").await["alarms"]["memory"].as_bool().unwrap());
    assert_eq!(call(http, "DELETE", "/api/warren/alarms/memory", None, Some(GUEST)).await.0, 204);
    let (status, refused) = call(http, "PUT", "/api/warren/alarms/cpu", None, Some(GUEST)).await;
    assert_eq!(status, 400);
    assert_eq!(refused["reason"], "unknown resource 'cpu'; known resources: memory, disk");

    // A typo or a wrong type is a 400 that names the known keys, and
    // nothing in the request is applied: the block below never happens.
    let faults = format!("/api/warren/connections/{}/faults", encode(&name));
    let (status, refused) = call(http, "POST", &faults, Some(r#"{"block": true, "blok": true}"#), Some(GUEST)).await;
    assert_eq!(status, 400);
    let reason = refused["reason"].as_str().unwrap();
    assert!(reason.starts_with("unknown fault 'blok'; known faults: withhold_heartbeats,"), "{reason}");
    for bad in [r#"{"block": "yes"}"#, r#"{"delivery_latency_ms": -1}"#, r#"{"delivery_latency_ms": 3600001}"#, "[]"] {
        assert_eq!(call(http, "POST", &faults, Some(bad), Some(GUEST)).await.0, 400, "{bad}");
    }
    let state = broker.connection(&name).unwrap().state();
    assert_eq!(state, warren::ConnectionState::Running);
    let mut frames = BytesMut::new();
    publish_frames(&mut frames, "q", false, b"m");
    client.send_raw(&frames).await;
    client.declare_queue("still-served").await;
    assert_eq!(broker.connection(&name).unwrap().state(), warren::ConnectionState::Running);
}

#[tokio::test]
async fn who_may_see_and_do_what_follows_rabbitmqs_user_tags() {
    let broker = EmbeddedBroker::builder()
        .http(true)
        .vhost("a")
        .user_with_tags("admin", "pw", &["administrator"])
        .user_with_tags("mon", "pw", &["monitoring"])
        .permissions("mon", "a", "", "", "")
        .user_with_tags("mgmt", "pw", &["management"])
        .permissions("mgmt", "a", ".*", ".*", ".*")
        .user("plain", "pw")
        .start()
        .await
        .unwrap();
    let http = broker.http_addr().unwrap();
    let (admin, mon, mgmt, plain) =
        (basic("admin", "pw"), basic("mon", "pw"), basic("mgmt", "pw"), basic("plain", "pw"));

    // Authentication and the management tag.
    let (status, head, body) = call_with_head(http, "GET", "/api/overview", None, None).await;
    assert_eq!((status, body), (401, Value::Null));
    assert!(head.to_lowercase().contains("www-authenticate: basic realm=\"rabbitmq management\""), "{head}");
    let (status, body) = call(http, "GET", "/api/overview", None, Some(&basic("admin", "wrong"))).await;
    assert_eq!((status, body), (401, serde_json::json!({"error": "not_authorized", "reason": "Not_Authorized"})));
    let (status, body) = call(http, "GET", "/api/overview", None, Some(&plain)).await;
    assert_eq!((status, body), (401, serde_json::json!({"error": "not_authorised", "reason": "Not management user"})));
    assert_eq!(call(http, "GET", "/api/overview", None, Some("%%%")).await.0, 400);
    let (_, me) = call(http, "GET", "/api/whoami", None, Some(&mon)).await;
    assert_eq!(me, serde_json::json!({"name": "mon", "tags": ["monitoring"]}));

    // A connection and a queue in each virtual host: guest's in "/", mgmt's in "a".
    let mut guest_client = RawClient::open(broker.addr(), 0).await;
    guest_client.declare_queue("in-root").await;
    let mut c = RawClient::connect(broker.addr()).await;
    c.handshake_to_tune_ok_as("mgmt", "pw", 2047, 131_072, 0).await;
    c.send(0, warren::protocol::methods::connection::Open { virtual_host: "a".into(), ..Default::default() }).await;
    assert!(matches!(c.expect_method(WAIT).await.1, Method::ConnectionOpenOk(_)));
    c.send(1, warren::protocol::methods::channel::Open::default()).await;
    c.expect_method(WAIT).await;
    c.declare_queue("in-a").await;

    let names = |v: &Value| -> Vec<String> {
        let mut n: Vec<String> =
            v.as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap().to_string()).collect();
        n.sort();
        n
    };
    let (_, conns) = call(http, "GET", "/api/connections", None, Some(&mgmt)).await;
    assert_eq!(conns.as_array().unwrap().len(), 1, "a management user sees only its own connections");
    assert_eq!(conns[0]["user"], "mgmt");
    let (_, conns) = call(http, "GET", "/api/connections", None, Some(&mon)).await;
    assert_eq!(conns.as_array().unwrap().len(), 2, "a monitor sees every connection");
    let guest_conn = conns.as_array().unwrap().iter().find(|c| c["user"] == "guest").unwrap()["name"].clone();
    let guest_conn = encode(guest_conn.as_str().unwrap());

    assert_eq!(names(&call(http, "GET", "/api/queues", None, Some(&mgmt)).await.1), ["in-a"]);
    // Monitors see every connection, but queues only where they have
    // permissions (any entry, even empty patterns), as in RabbitMQ.
    assert_eq!(names(&call(http, "GET", "/api/queues", None, Some(&mon)).await.1), ["in-a"]);
    assert_eq!(names(&call(http, "GET", "/api/queues", None, Some(&admin)).await.1), ["in-a", "in-root"]);
    let refused =
        serde_json::json!({"error": "not_authorised", "reason": "User not authorised to access virtual host"});
    assert_eq!(call(http, "GET", "/api/queues/%2F", None, Some(&mgmt)).await, (401, refused.clone()));
    assert_eq!(call(http, "GET", "/api/queues/%2F/in-root", None, Some(&mgmt)).await, (401, refused));
    assert_eq!(call(http, "GET", "/api/queues/nope", None, Some(&mgmt)).await.0, 404);
    assert_eq!(call(http, "GET", "/api/queues/a/in-a", None, Some(&mgmt)).await.0, 200);
    let exchanges = call(http, "GET", "/api/exchanges", None, Some(&mgmt)).await.1;
    assert!(exchanges.as_array().unwrap().iter().all(|x| x["vhost"] == "a"));

    let object = serde_json::json!({"error": "not_authorised", "reason": "User not authorised to access object"});
    let path = format!("/api/connections/{guest_conn}");
    assert_eq!(call(http, "GET", &path, None, Some(&mgmt)).await, (401, object.clone()));
    assert_eq!(call(http, "GET", &path, None, Some(&mon)).await.0, 200);
    assert_eq!(call(http, "DELETE", &path, None, Some(&mgmt)).await, (401, object.clone()));
    assert_eq!(call(http, "DELETE", &path, None, Some(&mon)).await, (401, object));

    // warren's control endpoints: administrators only; events: monitors.
    let not_admin = serde_json::json!({"error": "not_authorised", "reason": "Not administrator user"});
    for who in [&mgmt, &mon] {
        assert_eq!(call(http, "PUT", "/api/warren/alarms/memory", None, Some(who)).await, (401, not_admin.clone()));
        let faults = format!("/api/warren/connections/{guest_conn}/faults");
        assert_eq!(call(http, "POST", &faults, Some(r#"{"kill": true}"#), Some(who)).await, (401, not_admin.clone()));
    }
    assert!(!broker.broker().alarms.current().memory, "a refused request changed nothing");
    assert_eq!(call(http, "GET", "/api/warren/events?since=0", None, Some(&mgmt)).await.0, 401);
    assert_eq!(call(http, "GET", "/api/warren/events?since=0", None, Some(&mon)).await.0, 200);

    // Closing: one's own connection, or anyone's as administrator.
    let (_, own) = call(http, "GET", "/api/connections", None, Some(&mgmt)).await;
    let own = encode(own[0]["name"].as_str().unwrap());
    assert_eq!(call(http, "DELETE", &format!("/api/connections/{own}"), None, Some(&mgmt)).await.0, 204);
    assert_eq!(call(http, "DELETE", &path, None, Some(&admin)).await.0, 204);
    assert!(matches!(guest_client.expect_method(WAIT).await, (0, Method::ConnectionClose(_))));
}

#[tokio::test]
async fn idle_and_half_sent_http_requests_let_go_of_their_sockets() {
    let limits = warren::config::HttpLimits {
        request_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        max_connections: 2,
    };
    let broker = EmbeddedBroker::builder().http(true).http_limits(limits).start().await.unwrap();
    let http = broker.http_addr().unwrap();
    // Two sockets take both places: one says nothing, one half a request.
    let mut silent = tokio::net::TcpStream::connect(http).await.unwrap();
    let mut half = tokio::net::TcpStream::connect(http).await.unwrap();
    half.write_all(b"GET /api/overview HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
    // AMQP is unaffected meanwhile.
    RawClient::open(broker.addr(), 0).await;
    // A third client waits in the backlog until a place frees: its answer
    // proves one of the first two was let go.
    let (status, _) = call(http, "GET", "/api/overview", None, Some(GUEST)).await;
    assert_eq!(status, 200);
    let mut byte = [0u8; 1];
    for stream in [&mut silent, &mut half] {
        let n = tokio::time::timeout(WAIT, stream.read(&mut byte)).await.expect("closed by the server");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
}

/// The management API's write side, a full round as a test suite would use
/// it: vhost, user, permissions, exchange, queue, binding; publish and get
/// with each ackmode; purge; and the refusals, each RabbitMQ's.
#[tokio::test]
async fn topology_users_and_messages_can_be_set_up_and_read_over_http() {
    let broker = EmbeddedBroker::builder().http(true).start().await.unwrap();
    let http = broker.http_addr().unwrap();
    let admin = Some(GUEST);
    let put = |path: &'static str, body: &'static str| async move { call(http, "PUT", path, Some(body), admin).await };

    assert_eq!(put("/api/vhosts/test-a", "").await.0, 201);
    assert_eq!(put("/api/vhosts/test-a", "").await.0, 204);
    assert!(get(http, "/api/vhosts").await.as_array().unwrap().iter().any(|v| v["name"] == "test-a"));
    assert_eq!(put("/api/users/carol", r#"{"password": "pw", "tags": "management"}"#).await.0, 201);
    assert_eq!(get(http, "/api/users/carol").await["tags"], serde_json::json!(["management"]));
    let all = r#"{"configure": ".*", "write": ".*", "read": ".*"}"#;
    assert_eq!(put("/api/permissions/test-a/carol", all).await.0, 201);
    // Creating the vhost gave guest, its creator, every permission there (as RabbitMQ).
    assert_eq!(put("/api/permissions/test-a/guest", all).await.0, 204);
    let carol = Some(basic("carol", "pw"));

    // Topology, as carol (permissions in test-a, tag management).
    let as_carol = |method: &'static str, path: &'static str, body: Option<&'static str>| {
        let carol = carol.clone();
        async move { call(http, method, path, body, carol.as_deref()).await }
    };
    let exchange = r#"{"type": "topic", "durable": true, "arguments": {"alternate-exchange": "alt"}}"#;
    assert_eq!(as_carol("PUT", "/api/exchanges/test-a/orders", Some(exchange)).await.0, 201);
    assert_eq!(as_carol("PUT", "/api/exchanges/test-a/orders", Some(exchange)).await.0, 204);
    let (status, refused) = as_carol("PUT", "/api/exchanges/test-a/orders", Some(r#"{"type": "fanout"}"#)).await;
    assert_eq!(status, 400);
    assert_eq!(
        refused["reason"],
        "inequivalent arg 'type' for exchange 'orders' in vhost 'test-a': received 'fanout' but current is 'topic'"
    );
    let queue = r#"{"durable": true, "arguments": {"x-max-length": 10}}"#;
    assert_eq!(as_carol("PUT", "/api/queues/test-a/eu", Some(queue)).await.0, 201);
    assert_eq!(as_carol("PUT", "/api/queues/test-a/eu", Some(queue)).await.0, 204);
    let (status, refused) =
        as_carol("PUT", "/api/queues/test-a/bad", Some(r#"{"arguments": {"x-max-priority": 300}}"#)).await;
    assert_eq!((status, refused["error"].as_str()), (400, Some("bad_request")), "{refused}");
    let (status, _, _) = call_with_head(
        http,
        "POST",
        "/api/bindings/test-a/e/orders/q/eu",
        Some(r#"{"routing_key": "eu.#"}"#),
        carol.as_deref(),
    )
    .await;
    assert_eq!(status, 201);
    let bindings = as_carol("GET", "/api/queues/test-a/eu/bindings", None).await.1;
    let keys: Vec<&str> = bindings.as_array().unwrap().iter().map(|b| b["routing_key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["eu", "eu.#"], "the default exchange's binding first, then ours: {bindings}");
    assert_eq!(bindings[1]["properties_key"], "eu.%23", "percent-encoded, as RabbitMQ");
    let from_orders = as_carol("GET", "/api/exchanges/test-a/orders/bindings/source", None).await.1;
    assert_eq!(from_orders.as_array().unwrap().len(), 1, "{from_orders}");
    assert_eq!(
        as_carol("GET", "/api/exchanges/test-a/orders/bindings/destination", None).await.1,
        serde_json::json!([])
    );
    assert_eq!(as_carol("GET", "/api/exchanges/test-a/orders/bindings/sideways", None).await.0, 404);
    assert_eq!(as_carol("GET", "/api/aliveness-test/test-a", None).await.1, serde_json::json!({"status": "ok"}));
    assert_eq!(as_carol("DELETE", "/api/queues/test-a/aliveness-test", None).await.0, 204);
    assert_eq!(get(http, "/api/vhosts/test-a/permissions").await.as_array().unwrap().len(), 2);
    assert_eq!(get(http, "/api/users/carol/permissions").await[0]["vhost"], "test-a");

    // Publish over HTTP, then get with each ackmode.
    for n in 1..=3 {
        let body = format!(
            r#"{{"routing_key": "eu.fr", "payload": "order {n}", "payload_encoding": "string", "properties": {{"delivery_mode": 2, "headers": {{"n": {n}}}}}}}"#
        );
        let (status, routed) =
            call(http, "POST", "/api/exchanges/test-a/orders/publish", Some(&body), carol.as_deref()).await;
        assert_eq!((status, routed), (200, serde_json::json!({"routed": true})));
    }
    let unrouted = r#"{"routing_key": "us", "payload": "x", "payload_encoding": "string", "properties": {}}"#;
    assert_eq!(as_carol("POST", "/api/exchanges/test-a/orders/publish", Some(unrouted)).await.1["routed"], false);
    let get_with = |mode: &'static str, count: u32| {
        let body = format!(r#"{{"count": {count}, "ackmode": "{mode}", "encoding": "auto", "truncate": 50000}}"#);
        let carol = carol.clone();
        async move { call(http, "POST", "/api/queues/test-a/eu/get", Some(&body), carol.as_deref()).await }
    };
    let (status, peeked) = get_with("ack_requeue_true", 2).await;
    assert_eq!(status, 200);
    assert_eq!(peeked[0]["payload"], "order 1");
    assert_eq!(peeked[0]["payload_bytes"], 7);
    assert_eq!(peeked[0]["payload_encoding"], "string");
    assert_eq!(peeked[0]["redelivered"], false);
    assert_eq!(peeked[0]["message_count"], 2);
    assert_eq!(peeked[0]["routing_key"], "eu.fr");
    assert_eq!(peeked[0]["properties"]["headers"]["n"], 1);
    assert_eq!(peeked[1]["payload"], "order 2");
    let (_, again) = get_with("reject_requeue_true", 1).await;
    assert_eq!((again[0]["payload"].as_str(), again[0]["redelivered"].as_bool()), (Some("order 1"), Some(true)));
    let (_, taken) = get_with("ack_requeue_false", 1).await;
    assert_eq!(taken[0]["payload"], "order 1");
    let (_, rejected) = get_with("reject_requeue_false", 1).await;
    assert_eq!(rejected[0]["payload"], "order 2");
    let queue_info = as_carol("GET", "/api/queues/test-a/eu", None).await.1;
    assert_eq!(queue_info["messages"], 1, "{queue_info}");
    assert_eq!(get_with("ack_requeue_maybe", 1).await.0, 400);
    assert_eq!(as_carol("DELETE", "/api/queues/test-a/eu?if-empty=true", None).await.0, 400);
    assert_eq!(as_carol("DELETE", "/api/queues/test-a/eu/contents", None).await.0, 204);
    assert_eq!(get_with("ack_requeue_true", 1).await.1, serde_json::json!([]));
    let direct = r#"{"routing_key": "eu", "payload": "order 0", "payload_encoding": "string", "properties": {}}"#;
    let (status, routed) = as_carol("POST", "/api/exchanges/test-a/amq.default/publish", Some(direct)).await;
    assert_eq!((status, routed["routed"].as_bool()), (200, Some(true)), "the default exchange is amq.default");
    assert_eq!(get_with("ack_requeue_false", 1).await.1[0]["payload"], "order 0");

    // Refusals: no permissions in the vhost, not an administrator, missing things.
    let (status, refused) = call(http, "PUT", "/api/queues/%2F/q", Some("{}"), carol.as_deref()).await;
    assert_eq!((status, refused["error"].as_str()), (401, Some("not_authorised")), "{refused}");
    assert_eq!(as_carol("PUT", "/api/vhosts/mine", None).await.0, 401);
    assert_eq!(as_carol("PUT", "/api/exchanges/nope/x", Some("{}")).await.0, 404);
    assert_eq!(
        as_carol("POST", "/api/queues/test-a/missing/get", Some(r#"{"ackmode": "ack_requeue_true"}"#)).await.0,
        404
    );

    // The AMQP side sees what HTTP made: carol connects to test-a.
    let mut client = RawClient::connect(broker.addr()).await;
    client.handshake_to_tune_ok_as("carol", "pw", 2047, 131_072, 0).await;
    client
        .send(0, warren::protocol::methods::connection::Open { virtual_host: "test-a".into(), ..Default::default() })
        .await;
    assert!(matches!(client.expect_method(WAIT).await, (0, Method::ConnectionOpenOk(_))));

    // Unbind, delete, and deleting the vhost closes carol's connection.
    assert_eq!(as_carol("DELETE", "/api/bindings/test-a/e/orders/q/eu/eu.%23", None).await.0, 204);
    assert_eq!(as_carol("GET", "/api/queues/test-a/eu/bindings", None).await.1.as_array().unwrap().len(), 1);
    assert_eq!(as_carol("DELETE", "/api/exchanges/test-a/orders", None).await.0, 204);
    assert_eq!(as_carol("DELETE", "/api/queues/test-a/eu", None).await.0, 204);
    assert_eq!(as_carol("DELETE", "/api/queues/test-a/eu", None).await.0, 404);
    assert_eq!(call(http, "DELETE", "/api/vhosts/test-a", None, admin).await.0, 204);
    match client.expect_method(WAIT).await {
        (0, Method::ConnectionClose(c)) => assert_eq!(c.reply_code, 320),
        other => panic!("{other:?}"),
    }
    client.send(0, warren::protocol::methods::connection::CloseOk {}).await;
    assert!(get(http, "/api/permissions").await.as_array().unwrap().iter().all(|p| p["vhost"] != "test-a"));
    assert_eq!(call(http, "DELETE", "/api/users/carol", None, admin).await.0, 204);
    assert_eq!(call(http, "GET", "/api/users/carol", None, admin).await.0, 404);

    // Reset over HTTP: what this test made goes; the broker's own stays.
    assert_eq!(put("/api/queues/%2F/left-over", "{}").await.0, 201);
    assert_eq!(put("/api/vhosts/left-over", "").await.0, 201);
    let (status, done) = call(http, "POST", "/api/warren/reset", None, admin).await;
    assert_eq!(status, 200);
    assert_eq!(done["all_gone"], true, "{done}");
    assert_eq!(call(http, "GET", "/api/queues/%2F/left-over", None, admin).await.0, 404);
    assert_eq!(call(http, "GET", "/api/vhosts/left-over", None, admin).await.0, 404);
    assert_eq!(call(http, "GET", "/api/vhosts/%2F", None, admin).await.0, 200);

    // A fresh vhost per test, with every permission for the caller.
    let (status, fresh) = call(http, "POST", "/api/warren/vhosts", None, admin).await;
    assert_eq!(status, 201);
    let name = fresh["name"].as_str().unwrap();
    assert_eq!(fresh["url"], format!("amqp://guest@{}/{name}", broker.addr()));
    let permitted = get(http, "/api/permissions").await;
    assert!(permitted.as_array().unwrap().iter().any(|p| p["vhost"] == name && p["user"] == "guest"));
    assert_eq!(call(http, "DELETE", &format!("/api/vhosts/{name}"), None, admin).await.0, 204);
}

/// The whole `/metrics` response (head and text), asked without credentials.
async fn metrics_text(http: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(http).await.unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn prometheus_metrics_use_rabbitmqs_names_and_need_no_credentials() {
    let broker = EmbeddedBroker::builder().http(true).start().await.unwrap();
    let http = broker.http_addr().unwrap();
    let mut client = RawClient::open(broker.addr(), 0).await;
    client.declare_queue("q").await;
    let mut frames = BytesMut::new();
    publish_frames(&mut frames, "q", false, b"one");
    publish_frames(&mut frames, "q", false, b"two");
    client.send_raw(&frames).await;
    client
        .send(1, warren::protocol::methods::basic::Get { queue: "q".into(), no_ack: false, ..Default::default() })
        .await;
    let tag = match client.expect_method(WAIT).await {
        (1, Method::BasicGetOk(ok)) => ok.delivery_tag,
        other => panic!("{other:?}"),
    };
    // Its content header and body.
    client.read(WAIT).await;
    client.read(WAIT).await;
    client.send(1, warren::protocol::methods::basic::Ack { delivery_tag: tag, multiple: false }).await;
    // A round trip, so that the ack has been handled before the scrape.
    client.declare_queue("q").await;

    let (status, head, _) = call_with_head(http, "GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    assert!(head.contains("application/openmetrics-text"), "{head}");
    let response = metrics_text(http).await;
    for line in [
        "rabbitmq_queue_messages_ready{vhost=\"/\",queue=\"q\"} 1",
        "rabbitmq_queue_messages_unacked{vhost=\"/\",queue=\"q\"} 0",
        "rabbitmq_queue_messages{vhost=\"/\",queue=\"q\"} 1",
        "rabbitmq_queues 1",
        "rabbitmq_connections 1",
        "rabbitmq_channels 1",
        "rabbitmq_global_messages_received_total 2",
        "rabbitmq_global_messages_delivered_total 1",
        "rabbitmq_global_messages_acknowledged_total 1",
        "rabbitmq_alarms_memory_used_watermark 0",
        "# TYPE rabbitmq_process_resident_memory_bytes gauge",
        "# EOF",
    ] {
        assert!(response.lines().any(|l| l == line), "no line {line:?} in:\n{response}");
    }

    // Counts are per connection; a closed connection's stay in the totals.
    drop(client);
    let mut open = broker.broker().gauges.connections.subscribe();
    tokio::time::timeout(WAIT, open.wait_for(|n| *n == 0)).await.unwrap().unwrap();
    let after = metrics_text(http).await;
    for line in [
        "rabbitmq_global_messages_received_total 2",
        "rabbitmq_global_messages_acknowledged_total 1",
        "rabbitmq_connections 0",
        "rabbitmq_connections_closed_total 1",
    ] {
        assert!(after.lines().any(|l| l == line), "no line {line:?} in:\n{after}");
    }
}

#[tokio::test]
async fn channels_and_consumers_are_listed_with_rabbitmqs_fields() {
    let broker = EmbeddedBroker::builder().http(true).start().await.unwrap();
    let http = broker.http_addr().unwrap();
    let mut client = RawClient::open(broker.addr(), 0).await;
    client.declare_queue("q").await;
    let consume = warren::protocol::methods::basic::Consume {
        queue: "q".into(),
        consumer_tag: "c1".into(),
        ..Default::default()
    };
    client.send(1, consume).await;
    assert!(matches!(client.expect_method(WAIT).await, (1, Method::BasicConsumeOk(_))));

    let consumers = get(http, "/api/consumers").await;
    let c = &consumers[0];
    assert_eq!((c["consumer_tag"].as_str(), c["queue"]["name"].as_str()), (Some("c1"), Some("q")), "{consumers}");
    assert_eq!(c["channel_details"]["number"], 1);
    assert_eq!(c["ack_required"], true);
    let channels = get(http, "/api/channels").await;
    assert_eq!(channels.as_array().unwrap().len(), 1, "{channels}");
    assert!(channels[0]["name"].as_str().unwrap().ends_with(" (1)"));
    assert_eq!(channels[0]["consumer_count"], 1);
    assert_eq!(channels[0]["vhost"], "/");
}

/// Export definitions, reset, import them back: everything is there again.
#[tokio::test]
async fn definitions_export_and_import_round_trip_through_a_reset() {
    let broker = EmbeddedBroker::builder().http(true).start().await.unwrap();
    let http = broker.http_addr().unwrap();
    let admin = Some(GUEST);
    for (path, body) in [
        ("/api/vhosts/shop", ""),
        ("/api/users/app", r#"{"password": "pw", "tags": "management"}"#),
        ("/api/permissions/shop/app", r#"{"configure": "^app-", "write": ".*", "read": ".*"}"#),
        ("/api/permissions/shop/guest", r#"{"configure": ".*", "write": ".*", "read": ".*"}"#),
        ("/api/exchanges/shop/orders", r#"{"type": "topic", "durable": true}"#),
        ("/api/queues/shop/eu", r#"{"durable": true, "arguments": {"x-max-length": 10}}"#),
    ] {
        let (status, body) = call(http, "PUT", path, Some(body), admin).await;
        assert!(status == 201 || status == 204, "{path}: {status} {body}");
    }
    let binding = Some(r#"{"routing_key": "eu.#"}"#);
    assert_eq!(call(http, "POST", "/api/bindings/shop/e/orders/q/eu", binding, admin).await.0, 201);

    let exported = get(http, "/api/definitions").await;
    assert_eq!(
        exported["queues"],
        serde_json::json!([{"name": "eu", "vhost": "shop", "durable": true, "auto_delete": false, "arguments": {"x-max-length": 10}}])
    );
    assert_eq!(exported["exchanges"][0]["name"], "orders");
    assert!(exported["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["routing_key"] == "eu.#" && b["destination"] == "eu"));
    let app = exported["users"].as_array().unwrap().iter().find(|u| u["name"] == "app").unwrap().clone();
    assert_eq!(app["hashing_algorithm"], "rabbit_password_hashing_sha256");
    assert!(app["password_hash"].as_str().unwrap().len() > 40, "plain passwords are exported hashed: {app}");
    let shop_only = get(http, "/api/definitions/shop").await;
    assert!(shop_only.get("users").is_none() && shop_only["queues"].as_array().unwrap().len() == 1);

    assert_eq!(call(http, "POST", "/api/warren/reset", None, admin).await.0, 200);
    assert_eq!(call(http, "GET", "/api/vhosts/shop", None, admin).await.0, 404);

    let (status, body) = call(http, "POST", "/api/definitions", Some(&exported.to_string()), admin).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(get(http, "/api/queues/shop/eu").await["arguments"]["x-max-length"], 10);
    let bindings = get(http, "/api/queues/shop/eu/bindings").await;
    assert!(bindings.as_array().unwrap().iter().any(|b| b["source"] == "orders" && b["routing_key"] == "eu.#"));
    // The hashed password still logs in.
    let (status, _) = call(http, "GET", "/api/whoami", None, Some(&basic("app", "pw"))).await;
    assert_eq!(status, 200);
    // One vhost's definitions, as RabbitMQ exports them (no vhost in the entries), into another.
    assert!(shop_only["queues"][0].get("vhost").is_none(), "{shop_only}");
    assert_eq!(call(http, "PUT", "/api/vhosts/copy", None, admin).await.0, 201);
    let (status, body) = call(http, "POST", "/api/definitions/copy", Some(&shop_only.to_string()), admin).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(get(http, "/api/queues/copy/eu").await["arguments"]["x-max-length"], 10);
    let (status, refused) = call(http, "POST", "/api/definitions", Some(r#"{"queues": [{"name": "q"}]}"#), admin).await;
    assert_eq!((status, refused["reason"].as_str()), (400, Some("a queue without 'vhost'")));
}

/// A definitions file exported by a real RabbitMQ 3.10.8 (its management
/// plugin's `GET /api/definitions`) imports into warren.
#[tokio::test]
async fn a_definitions_file_exported_by_rabbitmq_imports() {
    let broker = EmbeddedBroker::builder().http(true).start().await.unwrap();
    let http = broker.http_addr().unwrap();
    let exported = include_str!("fixtures/rabbitmq-3.10-definitions.json");
    let (status, body) = call(http, "POST", "/api/definitions", Some(exported), Some(GUEST)).await;
    assert_eq!(status, 204, "{body}");
    let eu = get(http, "/api/queues/defs/eu").await;
    assert_eq!(eu["arguments"]["x-max-length"], 10);
    assert_eq!(get(http, "/api/exchanges/defs/orders").await["arguments"]["alternate-exchange"], "unrouted");
    let to_exchanges = get(http, "/api/exchanges/defs/unrouted/bindings/destination").await;
    assert_eq!(to_exchanges[0]["routing_key"], "all", "{to_exchanges}");
    // RabbitMQ's password hash for app ("pw") logs in.
    assert_eq!(call(http, "GET", "/api/whoami", None, Some(&basic("app", "pw"))).await.0, 200);
    assert_eq!(get(http, "/api/permissions/defs/app").await["configure"], "^app-");
}

/// Every input of the management API's write side has a bound, answered
/// with a 400 (or 413 for a body too large), and nothing is changed.
#[tokio::test]
async fn management_inputs_are_bounded() {
    let broker = EmbeddedBroker::builder().http(true).start().await.unwrap();
    let http = broker.http_addr().unwrap();
    let admin = Some(GUEST);
    let long = "q".repeat(256);
    assert_eq!(call(http, "PUT", &format!("/api/queues/%2F/{long}"), Some("{}"), admin).await.0, 400);
    assert_eq!(call(http, "PUT", &format!("/api/vhosts/{long}"), None, admin).await.0, 400);
    let key = "k".repeat(256);
    let args = format!(r#"{{"arguments": {{"{key}": 1}}}}"#);
    assert_eq!(call(http, "PUT", "/api/queues/%2F/q", Some(&args), admin).await.0, 400);
    let regex = format!(r#"{{"configure": "{}", "write": "", "read": ""}}"#, "a".repeat(5000));
    assert_eq!(call(http, "PUT", "/api/permissions/%2F/guest", Some(&regex), admin).await.0, 400);
    assert_eq!(call(http, "PUT", "/api/queues/%2F/q", Some("{}"), admin).await.0, 201);
    let get_many = r#"{"count": 10001, "ackmode": "ack_requeue_true"}"#;
    assert_eq!(call(http, "POST", "/api/queues/%2F/q/get", Some(get_many), admin).await.0, 400);
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let nested = format!(r#"{{"arguments": {{"x": {deep}}}}}"#);
    assert_eq!(
        call(http, "PUT", "/api/queues/%2F/deep", Some(&nested), admin).await.0,
        400,
        "JSON nests at most 128 deep"
    );
    let big = format!(r#"{{"queues": [], "padding": "{}"}}"#, "x".repeat(3 << 20));
    assert_eq!(call(http, "POST", "/api/definitions", Some(&big), admin).await.0, 413);
    // Control characters in a name are data, not markup: kept as given and
    // escaped in the JSON (log lines escape them too, see src/logging.rs).
    assert_eq!(call(http, "PUT", "/api/queues/%2F/a%0Ab%1B", Some("{}"), admin).await.0, 201);
    let odd = get(http, "/api/queues/%2F/a%0Ab%1B").await;
    assert_eq!(odd["name"], "a\nb\u{1b}");
    let mut names: Vec<String> = broker.broker().queue_infos().into_iter().map(|q| q.name).collect();
    names.sort();
    assert_eq!(names, ["a\nb\u{1b}", "q"]);
}
