//! The store's one writer thread: takes every operation handed over since
//! its last pass, appends their records, `fsync`s each file it touched
//! once, then announces the last ticket as synced (group commit; see the
//! module docs of `store`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tracing::{error, warn};

use super::definitions::{self, DefOp, Model};
use super::records::{self, Mark, MARKS_MAGIC, SEGMENT_MAGIC};
use super::recover::{segment_paths, write_meta, SegmentState, State};
use super::{queue_dir_name, Op, Shared};

/// A segment takes no more appends past this size.
const SEGMENT_BYTES: u64 = 4 * 1024 * 1024;

/// A file being appended to: what is buffered for it in this pass, and how
/// long it is on disk (to cut a failed write back to).
struct Appending {
    file: File,
    path: PathBuf,
    buf: BytesMut,
    len: u64,
}

impl Appending {
    fn open(path: PathBuf, magic: &[u8]) -> std::io::Result<Appending> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let len = file.metadata()?.len();
        let mut buf = BytesMut::new();
        if len == 0 {
            buf.put_slice(magic);
        }
        Ok(Appending { file, path, buf, len })
    }

    fn write(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write_all(&self.buf) {
            // Part of it may be on disk: cut it off, so that the retry does
            // not follow a partial record.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

struct Segment {
    number: u32,
    live: usize,
    size: u64,
    seg: Option<Appending>,
    marks: Option<Appending>,
}

struct QueueFiles {
    dir: PathBuf,
    vhost: String,
    /// By the sequence number of their first message.
    segments: BTreeMap<u64, Segment>,
    next_number: u32,
    /// The segment taking appends (its key), if any.
    current: Option<u64>,
}

pub(super) struct Writer {
    dir: PathBuf,
    model: Model,
    log: Appending,
    log_lines: usize,
    /// Rewrite the log from the live set at the end of this pass.
    rewrite_log: bool,
    recovered: HashMap<String, Vec<SegmentState>>,
    queues: HashMap<u64, QueueFiles>,
    /// (queue, segment key) with something buffered in this pass.
    dirty: HashSet<(u64, u64)>,
}

impl Writer {
    pub fn new(dir: PathBuf, state: State) -> Result<Writer, String> {
        let log = Appending::open(dir.join("definitions.log"), b"").map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut w = Writer {
            dir,
            model: state.model,
            log,
            log_lines: state.log_lines,
            rewrite_log: false,
            recovered: state.queues,
            queues: HashMap::new(),
            dirty: HashSet::new(),
        };
        // Start from a log of the live set only.
        w.compact().map_err(|e| format!("{}: {e}", w.log.path.display()))?;
        Ok(w)
    }

    pub fn run(mut self, shared: &Shared) {
        loop {
            let (ops, ticket, stop) = {
                let mut p = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
                while p.ops.is_empty() && !p.stop {
                    p = shared.wake.wait(p).unwrap_or_else(|e| e.into_inner());
                }
                (std::mem::take(&mut p.ops), p.ticket, p.stop)
            };
            for op in ops {
                self.apply(op);
            }
            // A disk that refuses (full, gone) holds the confirms back
            // until it takes the writes again.
            while let Err(e) = self.sync() {
                error!("message store: {e}; retrying in 1 s");
                std::thread::sleep(Duration::from_secs(1));
            }
            shared.synced.send_replace(ticket);
            if stop && shared.pending.lock().unwrap_or_else(|e| e.into_inner()).ops.is_empty() {
                return;
            }
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Open { queue, vhost, name } => self.open(queue, vhost, &name),
            Op::Append { queue, seq, message } => {
                let Some(q) = self.queues.get_mut(&queue) else { return };
                let key = match q.current {
                    Some(key) if q.segments[&key].size < SEGMENT_BYTES => key,
                    _ => {
                        let number = q.next_number;
                        q.next_number += 1;
                        q.segments.insert(seq, Segment { number, live: 0, size: 0, seg: None, marks: None });
                        q.current = Some(seq);
                        seq
                    }
                };
                let segment = q.segments.get_mut(&key).expect("current segment");
                let seg = match &mut segment.seg {
                    Some(seg) => seg,
                    None => match Appending::open(segment_paths(&q.dir, segment.number).0, SEGMENT_MAGIC) {
                        Ok(a) => segment.seg.insert(a),
                        Err(e) => return error!("message store: cannot open a segment in {}: {e}", q.dir.display()),
                    },
                };
                let before = seg.buf.len();
                records::message_head(seq, &message, &mut seg.buf);
                // File writes copy anyway: gathering the body here costs one
                // copy and saves a system call per chunk.
                for chunk in message.body.chunks() {
                    seg.buf.put_slice(chunk);
                }
                segment.size += (seg.buf.len() - before) as u64;
                segment.live += 1;
                self.dirty.insert((queue, key));
            }
            Op::Mark { queue, seq, mark } => self.mark(queue, seq, mark),
            Op::Drop { queue } => {
                if let Some(q) = self.queues.remove(&queue) {
                    remove_dir(&q.dir);
                }
            }
            Op::Definition(op) => {
                if let DefOp::DeleteVhost(vhost) = &op {
                    let gone: Vec<u64> =
                        self.queues.iter().filter(|(_, q)| &q.vhost == vhost).map(|(id, _)| *id).collect();
                    for id in gone {
                        remove_dir(&self.queues.remove(&id).expect("listed").dir);
                    }
                }
                self.model.apply(&op);
                self.log.buf.put_slice(definitions::encode(&op).as_bytes());
                self.log.buf.put_u8(b'\n');
                self.log_lines += 1;
            }
            Op::Clear => {
                for (_, q) in self.queues.drain() {
                    remove_dir(&q.dir);
                }
                self.dirty.clear();
                self.model = Model::default();
                self.log.buf.clear();
                self.rewrite_log = true; // as the empty set, at the end of the pass
            }
        }
    }

    fn open(&mut self, queue: u64, vhost: String, name: &str) {
        let dir_name = queue_dir_name(&vhost, name);
        let dir = self.dir.join("queues").join(&dir_name);
        let segments = self.recovered.remove(&dir_name).unwrap_or_default();
        if segments.is_empty() {
            if let Err(e) = fs::create_dir_all(&dir).and_then(|_| write_meta(&dir, &vhost, name)) {
                error!("message store: cannot create {}: {e}", dir.display());
            }
        }
        let next_number = segments.iter().map(|s| s.number + 1).max().unwrap_or(1);
        let segments = segments
            .into_iter()
            .map(|s| (s.first_seq, Segment { number: s.number, live: s.live, size: 0, seg: None, marks: None }))
            .collect();
        self.queues.insert(queue, QueueFiles { dir, vhost, segments, next_number, current: None });
    }

    fn mark(&mut self, queue: u64, seq: u64, mark: Mark) {
        let Some(q) = self.queues.get_mut(&queue) else { return };
        let Some((&key, segment)) = q.segments.range_mut(..=seq).next_back() else { return };
        if mark == Mark::Removed {
            segment.live = segment.live.saturating_sub(1);
            let closed = q.current != Some(key) || segment.size >= SEGMENT_BYTES;
            if segment.live == 0 && closed {
                // Every message in it is gone: so is the segment, whole.
                let (seg, marks) = segment_paths(&q.dir, segment.number);
                q.segments.remove(&key);
                if q.current == Some(key) {
                    q.current = None;
                }
                self.dirty.remove(&(queue, key));
                for path in [seg, marks] {
                    if let Err(e) = fs::remove_file(&path) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            warn!("message store: cannot remove {}: {e}", path.display());
                        }
                    }
                }
                return;
            }
        }
        let marks = match &mut segment.marks {
            Some(m) => m,
            None => match Appending::open(segment_paths(&q.dir, segment.number).1, MARKS_MAGIC) {
                Ok(a) => segment.marks.insert(a),
                Err(e) => return error!("message store: cannot open a marks file in {}: {e}", q.dir.display()),
            },
        };
        records::mark(mark, seq, &mut marks.buf);
        self.dirty.insert((queue, key));
    }

    /// Writes what this pass buffered, then makes it durable: the data of
    /// every file first, then one `fsync` each.
    fn sync(&mut self) -> Result<(), String> {
        let fail = |path: &Path, e: std::io::Error| format!("{}: {e}", path.display());
        let dirty: Vec<(u64, u64)> = self.dirty.iter().copied().collect();
        for (queue, key) in &dirty {
            let Some(segment) = self.queues.get_mut(queue).and_then(|q| q.segments.get_mut(key)) else { continue };
            for file in [&mut segment.seg, &mut segment.marks].into_iter().flatten() {
                file.write().map_err(|e| fail(&file.path, e))?;
            }
        }
        // Marks too, although a confirm only promises the message: a
        // delivery mark lost to a power cut would bring an unacknowledged
        // message back without `redelivered`. Measured, the second fsync in
        // a pass costs nothing visible: the batches just grow.
        for (queue, key) in &dirty {
            let Some(segment) = self.queues.get(queue).and_then(|q| q.segments.get(key)) else { continue };
            for file in [&segment.seg, &segment.marks].into_iter().flatten() {
                file.file.sync_data().map_err(|e| fail(&file.path, e))?;
            }
        }
        self.dirty.clear();
        for (queue, key) in dirty {
            // Files are opened again when next needed: the open files are
            // those of one pass, however many durable queues clients make.
            if let Some(segment) = self.queues.get_mut(&queue).and_then(|q| q.segments.get_mut(&key)) {
                segment.seg = None;
                segment.marks = None;
            }
        }
        if self.rewrite_log || self.log_lines > 2 * self.model.len() + 1000 {
            self.compact().map_err(|e| fail(&self.log.path, e))?;
            self.rewrite_log = false;
        } else if !self.log.buf.is_empty() {
            self.log.write().map_err(|e| fail(&self.log.path, e))?;
            self.log.file.sync_data().map_err(|e| fail(&self.log.path, e))?;
        }
        Ok(())
    }

    /// Rewrites the definitions log as the live set: written beside it,
    /// synced, then renamed over it, so that a crash leaves one or the other.
    fn compact(&mut self) -> std::io::Result<()> {
        let path = self.log.path.clone();
        let tmp = path.with_extension("log.new");
        let mut text = String::new();
        for op in self.model.ops() {
            text.push_str(&definitions::encode(&op));
            text.push('\n');
        }
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        if let Ok(dir) = File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        self.log = Appending::open(path, b"")?;
        self.log_lines = self.model.len();
        Ok(())
    }
}

fn remove_dir(dir: &Path) {
    if let Err(e) = fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!("message store: cannot remove {}: {e}", dir.display());
        }
    }
}
