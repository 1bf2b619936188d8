//! Class `confirm` (85), a RabbitMQ extension: publisher confirms.

method!(Select = 85 / 10, "confirm.select" { no_wait: bool });
method!(SelectOk = 85 / 11, "confirm.select-ok" {});
