//! The message store: durable definitions and persistent messages on disk,
//! when the broker is given a data directory (`--data-dir`, `data_dir`).
//! Without one, nothing here runs and nothing touches the disk.
//!
//! # The design, and where it comes from
//!
//! It follows RabbitMQ's classic queue store v2 and LavinMQ, the two
//! brokers whose stores are simple enough to read in an afternoon:
//!
//! - **One directory per durable queue** (`queues/<hash>/`, named by a
//!   hash of vhost and name, with `queue.json` saying which queue it is),
//!   holding **append-only segment files** of that queue's persistent
//!   messages (`00000001.seg`, …), as CQv2's per-queue segments and
//!   LavinMQ's `msgs.*` files.
//! - Beside each segment, a **marks file** (`00000001.mrk`) of what
//!   happened to its messages since: delivered (so a message unacknowledged
//!   at a crash comes back `redelivered`, as CQv2's index records
//!   deliveries) and removed (acknowledged, expired, dead-lettered,
//!   purged), as LavinMQ's `acks.*` files.
//! - A segment whose messages have all been removed is **deleted whole**:
//!   no compaction of message files, ever. A segment is closed for appends
//!   at 4 MiB, so a queue that keeps up with its publishers holds one or
//!   two segments.
//! - **Definitions** (vhosts, durable exchanges, durable queues, bindings
//!   between durable ends) are an append-only log of JSON lines,
//!   `definitions.log`, rewritten from the live set at start-up and
//!   whenever it has grown to several times that, as LavinMQ's
//!   `definitions.amqp`.
//!
//! # Group commit, and what a confirm means
//!
//! Connections never write. They hand operations ([`Op`]) to one writer
//! thread (`writer.rs`) through a mutex-guarded list, each numbered by a
//! ticket. The writer takes the whole list at once, appends every record,
//! then calls `fsync` once per file it touched (segments and marks), and
//! only then announces the last ticket as synced. While it waits on the disk, the next batch
//! gathers: the more publishers, the larger the batch, and the cost of an
//! `fsync` is shared by everything in it. A publisher confirm for a
//! persistent message routed to a durable queue waits for the ticket of
//! its append to be synced (`connection::channel`): a confirm means "on
//! disk".
//!
//! # Recovery
//!
//! At start (`recover.rs`) the definitions log is replayed, each queue
//! directory read: messages not removed come back in order, those marked
//! delivered with `redelivered` set. A record cut short by a crash at the
//! end of a file is found by its length or checksum; the intact prefix is
//! kept, the rest cut off, with a warning. A foreign or corrupt file in the
//! middle refuses the start, naming the file.

mod definitions;
mod records;
mod recover;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::watch;

use crate::broker::message::Message;
pub use definitions::DefOp;
pub use recover::{RecoveredMessage, Recovery};

/// What a connection asks the writer to do.
enum Op {
    /// Start writing for a queue (its directory made if new).
    Open {
        queue: u64,
        vhost: String,
        name: String,
    },
    Append {
        queue: u64,
        seq: u64,
        message: Arc<Message>,
    },
    Mark {
        queue: u64,
        seq: u64,
        mark: records::Mark,
    },
    /// The queue was deleted: its directory goes.
    Drop {
        queue: u64,
    },
    Definition(DefOp),
    /// Everything goes (a broker reset).
    Clear,
}

struct Pending {
    ops: Vec<Op>,
    /// The ticket of the last op pushed.
    ticket: u64,
    stop: bool,
}

/// What connections and the writer share.
struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    synced: watch::Sender<u64>,
}

/// A broker's message store (see the module docs).
pub struct Store {
    dir: PathBuf,
    /// Held locked while the store is open: a second broker on the same
    /// directory is refused instead of writing over this one.
    _lock: std::fs::File,
    shared: Arc<Shared>,
    next_queue: AtomicU64,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Store {
    /// Opens (or creates) the data directory and reads back what it holds.
    /// The error names the file that could not be read, and why.
    pub fn open(dir: &Path) -> Result<(Arc<Store>, Recovery), String> {
        std::fs::create_dir_all(dir.join("queues")).map_err(|e| format!("{}: {e}", dir.display()))?;
        let lock = lock(dir)?;
        let (recovery, state) = recover::recover(dir)?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending { ops: Vec::new(), ticket: 0, stop: false }),
            wake: Condvar::new(),
            synced: watch::channel(0).0,
        });
        let writer = writer::Writer::new(dir.to_path_buf(), state)?;
        let thread = std::thread::Builder::new()
            .name("warren-store".into())
            .spawn({
                let shared = shared.clone();
                move || writer.run(&shared)
            })
            .map_err(|e| format!("cannot start the store's writer: {e}"))?;
        let store = Store {
            dir: dir.to_path_buf(),
            _lock: lock,
            shared,
            next_queue: AtomicU64::new(1),
            thread: Mutex::new(Some(thread)),
        };
        Ok((Arc::new(store), recovery))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Hands an operation to the writer; returns its ticket.
    fn push(&self, op: Op) -> u64 {
        let mut p = self.shared.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.ops.push(op);
        p.ticket += 1;
        if p.ops.len() == 1 {
            self.shared.wake.notify_one();
        }
        p.ticket
    }

    /// The ticket of the last operation handed over: once it is synced,
    /// so is everything before it.
    pub fn last_ticket(&self) -> u64 {
        self.shared.pending.lock().unwrap_or_else(|e| e.into_inner()).ticket
    }

    /// The last ticket on disk now.
    pub fn synced_now(&self) -> u64 {
        *self.shared.synced.borrow()
    }

    /// The last ticket on disk, watchable.
    pub fn synced(&self) -> watch::Receiver<u64> {
        self.shared.synced.subscribe()
    }

    /// Starts writing for a durable queue; its messages go through the
    /// returned journal.
    pub fn journal(self: &Arc<Self>, vhost: &str, name: &str) -> Journal {
        let queue = self.next_queue.fetch_add(1, Ordering::Relaxed);
        self.push(Op::Open { queue, vhost: vhost.to_string(), name: name.to_string() });
        Journal { store: self.clone(), queue }
    }

    /// Records a change of durable definitions.
    pub fn definition(&self, op: DefOp) {
        self.push(Op::Definition(op));
    }

    /// Forgets everything: every queue directory and every definition.
    pub fn clear(&self) {
        self.push(Op::Clear);
    }

    /// Waits until everything handed over so far is on disk (tests, and
    /// shutdown).
    pub async fn flush(&self) {
        let ticket = self.last_ticket();
        let mut synced = self.synced();
        let _ = synced.wait_for(|s| *s >= ticket).await;
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Drop for Store {
    /// Lets the writer finish what it was handed, then stops it.
    fn drop(&mut self) {
        self.shared.pending.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

/// One durable queue's way to the store.
pub struct Journal {
    store: Arc<Store>,
    queue: u64,
}

impl Journal {
    /// A persistent message at position `seq`; returns its ticket.
    pub fn append(&self, seq: u64, message: &Arc<Message>) -> u64 {
        self.store.push(Op::Append { queue: self.queue, seq, message: message.clone() })
    }

    /// Handed to a consumer that will acknowledge it.
    pub fn delivered(&self, seq: u64) {
        self.store.push(Op::Mark { queue: self.queue, seq, mark: records::Mark::Delivered });
    }

    /// Gone from the queue for good.
    pub fn removed(&self, seq: u64) {
        self.store.push(Op::Mark { queue: self.queue, seq, mark: records::Mark::Removed });
    }

    /// The queue was deleted.
    pub fn drop_queue(&self) {
        self.store.push(Op::Drop { queue: self.queue });
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}

/// Locks `dir/lock` for this process (released when the file is closed).
fn lock(dir: &Path) -> Result<std::fs::File, String> {
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(format!("{} is in use by another broker", dir.display()));
        }
    }
    Ok(file)
}

/// The directory of a queue: a stable hash of vhost and name (FNV-1a, 64
/// bits), so that any name, however odd, makes a plain file name.
fn queue_dir_name(vhost: &str, name: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in vhost.bytes().chain([0]).chain(name.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}
