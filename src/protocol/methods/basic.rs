//! Class `basic` (60): publishing, consuming, getting and acknowledging.

use crate::protocol::codec::ShortStr;
use crate::protocol::field_table::FieldTable;

method!(
    /// Limits unacknowledged deliveries. RabbitMQ reads `global = false` as
    /// per consumer and `global = true` as per channel.
    Qos = 60 / 10, "basic.qos" { prefetch_size: u32, prefetch_count: u16, global: bool }
);
method!(QosOk = 60 / 11, "basic.qos-ok" {});
method!(
    Consume = 60 / 20, "basic.consume" {
        reserved_1: u16,
        queue: ShortStr,
        /// Empty asks the server for a tag (`amq.ctag-…`).
        consumer_tag: ShortStr,
        no_local: bool,
        no_ack: bool,
        exclusive: bool,
        no_wait: bool,
        arguments: FieldTable,
    }
);
method!(ConsumeOk = 60 / 21, "basic.consume-ok" { consumer_tag: ShortStr });
method!(Cancel = 60 / 30, "basic.cancel" { consumer_tag: ShortStr, no_wait: bool });
method!(CancelOk = 60 / 31, "basic.cancel-ok" { consumer_tag: ShortStr });
method!(
    /// Followed by a content header and body frames.
    Publish = 60 / 40, "basic.publish" {
        reserved_1: u16,
        exchange: ShortStr,
        routing_key: ShortStr,
        mandatory: bool,
        immediate: bool,
    }
);
method!(
    Return = 60 / 50, "basic.return" {
        reply_code: u16,
        reply_text: ShortStr,
        exchange: ShortStr,
        routing_key: ShortStr,
    }
);
method!(
    Deliver = 60 / 60, "basic.deliver" {
        consumer_tag: ShortStr,
        delivery_tag: u64,
        redelivered: bool,
        exchange: ShortStr,
        routing_key: ShortStr,
    }
);
method!(Get = 60 / 70, "basic.get" { reserved_1: u16, queue: ShortStr, no_ack: bool });
method!(
    GetOk = 60 / 71, "basic.get-ok" {
        delivery_tag: u64,
        redelivered: bool,
        exchange: ShortStr,
        routing_key: ShortStr,
        /// Messages left in the queue after this one.
        message_count: u32,
    }
);
method!(GetEmpty = 60 / 72, "basic.get-empty" { reserved_1: ShortStr });
method!(Ack = 60 / 80, "basic.ack" { delivery_tag: u64, multiple: bool });
method!(Reject = 60 / 90, "basic.reject" { delivery_tag: u64, requeue: bool });
method!(RecoverAsync = 60 / 100, "basic.recover-async" { requeue: bool });
method!(Recover = 60 / 110, "basic.recover" { requeue: bool });
method!(RecoverOk = 60 / 111, "basic.recover-ok" {});
method!(
    /// RabbitMQ extension: a reject that can cover many tags.
    Nack = 60 / 120, "basic.nack" { delivery_tag: u64, multiple: bool, requeue: bool }
);
