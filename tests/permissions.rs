//! Users, virtual hosts and permissions, with lapin over TCP: RabbitMQ's
//! configure/write/read regexes, 403 ACCESS_REFUSED texts, vhost access.

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use warren::EmbeddedBroker;

async fn connect(url: &str) -> Result<Connection, lapin::Error> {
    Connection::connect(url, ConnectionProperties::default()).await
}

async fn broker() -> EmbeddedBroker {
    EmbeddedBroker::builder()
        .vhost("dev")
        .user("bob", "secret")
        .permissions("bob", "/", "^bob-", "^bob-", "^bob-")
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn configure_write_and_read_are_checked_against_the_users_regexes() {
    let broker = broker().await;
    let guest = connect(&broker.url()).await.unwrap();
    let gch = guest.create_channel().await.unwrap();
    gch.queue_declare("shared".into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();

    let bob = connect(&broker.url_for("bob", "secret", "/")).await.unwrap();
    let ch = bob.create_channel().await.unwrap();
    ch.queue_declare("bob-q".into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();

    let err =
        ch.queue_declare("other".into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("ACCESS_REFUSED - configure access to queue 'other' in vhost '/' refused for user 'bob'"),
        "{err}"
    );

    let ch = bob.create_channel().await.unwrap();
    let err = ch
        .basic_consume("shared".into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("read access to queue 'shared' in vhost '/' refused for user 'bob'"), "{err}");

    // Publishing to the default exchange needs write on "amq.default".
    let ch = bob.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let published = ch
        .basic_publish("".into(), "bob-q".into(), BasicPublishOptions::default(), b"x", BasicProperties::default())
        .await;
    let outcome = match published {
        Ok(confirm) => confirm.await.map(|_| ()),
        Err(e) => Err(e),
    };
    let err = outcome.expect_err("the publish is refused");
    assert!(
        err.to_string().contains("write access to exchange 'amq.default' in vhost '/' refused for user 'bob'"),
        "{err}"
    );
}

#[tokio::test]
async fn a_user_without_permissions_in_a_vhost_cannot_open_it() {
    let broker = broker().await;
    let err = connect(&broker.url_for("bob", "secret", "dev")).await.expect_err("no permissions in dev");
    assert!(err.to_string().contains("access to vhost 'dev' refused for user 'bob'"), "{err}");
    // guest, with no explicit permissions, gets everything in the builder.
    connect(&broker.url_for("guest", "guest", "dev")).await.unwrap();
    let err = connect(&broker.url_for("bob", "wrong", "/")).await.expect_err("bad password");
    assert!(err.to_string().contains("ACCESS_REFUSED"), "{err}");
}
