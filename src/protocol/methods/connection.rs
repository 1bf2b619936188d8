//! Class `connection` (10): the handshake, tuning and closing of a connection.
//! All of these travel on channel 0.

use bytes::Bytes;

use crate::protocol::codec::ShortStr;
use crate::protocol::field_table::FieldTable;

method!(
    /// Server -> client: the first method; offers versions, mechanisms, locales.
    Start = 10 / 10, "connection.start" {
        version_major: u8,
        version_minor: u8,
        server_properties: FieldTable,
        mechanisms: Bytes,
        locales: Bytes,
    }
);
method!(
    /// Client -> server: picks a mechanism and answers it.
    StartOk = 10 / 11, "connection.start-ok" {
        client_properties: FieldTable,
        mechanism: ShortStr,
        response: Bytes,
        locale: ShortStr,
    }
);
method!(Secure = 10 / 20, "connection.secure" { challenge: Bytes });
method!(SecureOk = 10 / 21, "connection.secure-ok" { response: Bytes });
method!(
    /// Server -> client: the server's proposed limits.
    Tune = 10 / 30, "connection.tune" { channel_max: u16, frame_max: u32, heartbeat: u16 }
);
method!(
    /// Client -> server: the values the connection will use. The heartbeat is
    /// taken exactly as sent (0 disables it).
    TuneOk = 10 / 31, "connection.tune-ok" { channel_max: u16, frame_max: u32, heartbeat: u16 }
);
method!(
    Open = 10 / 40, "connection.open" {
        virtual_host: ShortStr,
        /// "capabilities" in 0-8; ignored.
        reserved_1: ShortStr,
        /// "insist" in 0-8; ignored.
        reserved_2: bool,
    }
);
method!(OpenOk = 10 / 41, "connection.open-ok" { reserved_1: ShortStr });
method!(
    Close = 10 / 50, "connection.close" {
        reply_code: u16,
        reply_text: ShortStr,
        /// The method that caused the close, or 0.
        class_id: u16,
        method_id: u16,
    }
);
method!(CloseOk = 10 / 51, "connection.close-ok" {});
method!(
    /// RabbitMQ extension: publishing is blocked by a resource alarm.
    Blocked = 10 / 60, "connection.blocked" { reason: ShortStr }
);
method!(Unblocked = 10 / 61, "connection.unblocked" {});
method!(UpdateSecret = 10 / 70, "connection.update-secret" { new_secret: Bytes, reason: ShortStr });
method!(UpdateSecretOk = 10 / 71, "connection.update-secret-ok" {});
