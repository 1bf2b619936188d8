//! Class `channel` (20): opening, flow and closing of a channel.

use bytes::Bytes;

use crate::protocol::codec::ShortStr;

method!(Open = 20 / 10, "channel.open" { reserved_1: ShortStr });
method!(OpenOk = 20 / 11, "channel.open-ok" { reserved_1: Bytes });
method!(
    /// Either side: pause (false) or resume (true) content sent to the peer.
    Flow = 20 / 20, "channel.flow" { active: bool }
);
method!(FlowOk = 20 / 21, "channel.flow-ok" { active: bool });
method!(
    Close = 20 / 40, "channel.close" {
        reply_code: u16,
        reply_text: ShortStr,
        class_id: u16,
        method_id: u16,
    }
);
method!(CloseOk = 20 / 41, "channel.close-ok" {});
