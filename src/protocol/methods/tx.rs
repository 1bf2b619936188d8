//! Class `tx` (90): transactions over publishes and acknowledgements.

method!(Select = 90 / 10, "tx.select" {});
method!(SelectOk = 90 / 11, "tx.select-ok" {});
method!(Commit = 90 / 20, "tx.commit" {});
method!(CommitOk = 90 / 21, "tx.commit-ok" {});
method!(Rollback = 90 / 30, "tx.rollback" {});
method!(RollbackOk = 90 / 31, "tx.rollback-ok" {});
