//! Class `exchange` (40): declaring, deleting and binding exchanges.

use crate::protocol::codec::ShortStr;
use crate::protocol::field_table::FieldTable;

method!(
    Declare = 40 / 10, "exchange.declare" {
        reserved_1: u16,
        exchange: ShortStr,
        kind: ShortStr,
        passive: bool,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        no_wait: bool,
        arguments: FieldTable,
    }
);
method!(DeclareOk = 40 / 11, "exchange.declare-ok" {});
method!(
    Delete = 40 / 20, "exchange.delete" {
        reserved_1: u16,
        exchange: ShortStr,
        if_unused: bool,
        no_wait: bool,
    }
);
method!(DeleteOk = 40 / 21, "exchange.delete-ok" {});
method!(
    /// RabbitMQ extension: exchange-to-exchange binding.
    Bind = 40 / 30, "exchange.bind" {
        reserved_1: u16,
        destination: ShortStr,
        source: ShortStr,
        routing_key: ShortStr,
        no_wait: bool,
        arguments: FieldTable,
    }
);
method!(BindOk = 40 / 31, "exchange.bind-ok" {});
method!(
    Unbind = 40 / 40, "exchange.unbind" {
        reserved_1: u16,
        destination: ShortStr,
        source: ShortStr,
        routing_key: ShortStr,
        no_wait: bool,
        arguments: FieldTable,
    }
);
method!(
    /// Its id is 51, not 41: an oddity of RabbitMQ's extension that clients follow.
    UnbindOk = 40 / 51, "exchange.unbind-ok" {}
);
