//! Class `queue` (50): declaring, binding, purging and deleting queues.

use crate::protocol::codec::ShortStr;
use crate::protocol::field_table::FieldTable;

method!(
    Declare = 50 / 10, "queue.declare" {
        reserved_1: u16,
        /// Empty asks the server to name the queue (`amq.gen-…`).
        queue: ShortStr,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        no_wait: bool,
        arguments: FieldTable,
    }
);
method!(
    DeclareOk = 50 / 11, "queue.declare-ok" {
        queue: ShortStr,
        message_count: u32,
        consumer_count: u32,
    }
);
method!(
    Bind = 50 / 20, "queue.bind" {
        reserved_1: u16,
        queue: ShortStr,
        exchange: ShortStr,
        routing_key: ShortStr,
        no_wait: bool,
        arguments: FieldTable,
    }
);
method!(BindOk = 50 / 21, "queue.bind-ok" {});
method!(
    Purge = 50 / 30, "queue.purge" {
        reserved_1: u16,
        queue: ShortStr,
        no_wait: bool,
    }
);
method!(PurgeOk = 50 / 31, "queue.purge-ok" { message_count: u32 });
method!(
    Delete = 50 / 40, "queue.delete" {
        reserved_1: u16,
        queue: ShortStr,
        if_unused: bool,
        if_empty: bool,
        no_wait: bool,
    }
);
method!(DeleteOk = 50 / 41, "queue.delete-ok" { message_count: u32 });
method!(
    Unbind = 50 / 50, "queue.unbind" {
        reserved_1: u16,
        queue: ShortStr,
        exchange: ShortStr,
        routing_key: ShortStr,
        arguments: FieldTable,
    }
);
method!(UnbindOk = 50 / 51, "queue.unbind-ok" {});
