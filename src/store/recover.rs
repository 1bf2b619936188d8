//! Reading a data directory back at start-up (see the module docs of
//! `store`): the definitions log replayed, each queue's segments read, what
//! a crash cut short cut off with a warning, what does not belong refused
//! with the file's name.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tracing::warn;

use super::definitions::{self, Model};
use super::records::{self, Mark, StoredMessage};
use crate::config::definitions::Topology;
use crate::config::{PermissionConfig, UserConfig};

/// What the broker gets back.
#[derive(Debug, Default)]
pub struct Recovery {
    pub vhosts: Vec<String>,
    pub topology: Topology,
    /// Users and permissions made while the broker ran (not those of its
    /// configuration, which it makes again itself).
    pub users: Vec<UserConfig>,
    pub permissions: Vec<PermissionConfig>,
    /// By (vhost, queue): the messages to put back, in order.
    pub messages: HashMap<(String, String), Vec<RecoveredMessage>>,
}

#[derive(Debug)]
pub struct RecoveredMessage {
    pub seq: u64,
    /// Marked delivered and never removed: it may have been seen.
    pub redelivered: bool,
    pub message: StoredMessage,
}

/// What the writer carries on from.
pub(super) struct State {
    pub model: Model,
    /// Lines in the definitions log as found (to know when to rewrite it).
    pub log_lines: usize,
    /// By queue directory name.
    pub queues: HashMap<String, Vec<SegmentState>>,
}

/// A segment that still holds live messages, oldest first.
#[derive(Debug, Clone)]
pub(super) struct SegmentState {
    pub number: u32,
    pub first_seq: u64,
    pub live: usize,
}

pub(super) fn recover(dir: &Path) -> Result<(Recovery, State), String> {
    let (model, log_lines) = read_definitions(&dir.join("definitions.log"))?;
    let mut recovery = Recovery {
        vhosts: model.vhosts.clone(),
        topology: model.topology(),
        users: model.users(),
        permissions: model.permissions(),
        ..Default::default()
    };
    let wanted: HashSet<(String, String)> =
        recovery.topology.queues.iter().map(|q| (q.vhost.clone(), q.name.clone())).collect();
    let mut queues = HashMap::new();
    let queues_dir = dir.join("queues");
    for entry in fs::read_dir(&queues_dir).map_err(|e| format!("{}: {e}", queues_dir.display()))? {
        let path = entry.map_err(|e| format!("{}: {e}", queues_dir.display()))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !path.is_dir() || name.len() != 16 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{}: not a queue directory of warren's", path.display()));
        }
        let Some((vhost, queue)) = read_meta(&path)? else {
            warn!("message store: {} was being created when the broker stopped; removed", path.display());
            remove(&path);
            continue;
        };
        if !wanted.contains(&(vhost.clone(), queue.clone())) {
            warn!(
                "message store: {} belongs to no durable queue (queue '{queue}' in vhost '{vhost}'); removed",
                path.display()
            );
            remove(&path);
            continue;
        }
        let (messages, segments) = read_queue(&path)?;
        queues.insert(name, segments);
        recovery.messages.insert((vhost, queue), messages);
    }
    Ok((recovery, State { model, log_lines, queues }))
}

fn remove(path: &Path) {
    if let Err(e) = fs::remove_dir_all(path) {
        warn!("message store: cannot remove {}: {e}", path.display());
    }
}

/// The log, replayed. A last line cut short is dropped with a warning; a
/// bad line before the last refuses the start.
fn read_definitions(path: &Path) -> Result<(Model, usize), String> {
    let mut model = Model::default();
    let text = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((model, 0)),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut lines = 0;
    let mut at = 0;
    while at < text.len() {
        let end = text[at..].iter().position(|&b| b == b'\n').map(|n| at + n);
        let line = &text[at..end.unwrap_or(text.len())];
        let op = std::str::from_utf8(line).map_err(|e| e.to_string()).and_then(definitions::decode);
        match (op, end) {
            (Ok(op), Some(end)) => {
                model.apply(&op);
                lines += 1;
                at = end + 1;
            }
            // Unfinished: the write of the last line was cut short.
            (_, None) => {
                warn!(
                    "message store: {}: the last line was cut short ({} octets); dropped",
                    path.display(),
                    text.len() - at
                );
                truncate(path, at as u64)?;
                break;
            }
            (Err(e), Some(_)) => return Err(format!("{}: line {}: {e}", path.display(), lines + 1)),
        }
    }
    Ok((model, lines))
}

fn read_meta(dir: &Path) -> Result<Option<(String, String)>, String> {
    let path = dir.join("queue.json");
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let field = |k: &str| v.get(k).and_then(|s| s.as_str()).map(str::to_string);
    match (field("vhost"), field("name")) {
        (Some(vhost), Some(name)) => Ok(Some((vhost, name))),
        _ => Err(format!("{}: not a queue description of warren's", path.display())),
    }
}

/// Writes a queue directory's description (the writer, when it opens one).
pub(super) fn write_meta(dir: &Path, vhost: &str, name: &str) -> std::io::Result<()> {
    let mut f = fs::File::create(dir.join("queue.json"))?;
    f.write_all(serde_json::json!({"vhost": vhost, "name": name}).to_string().as_bytes())?;
    f.sync_all()
}

/// A queue's live messages, and its segments for the writer.
fn read_queue(dir: &Path) -> Result<(Vec<RecoveredMessage>, Vec<SegmentState>), String> {
    let mut numbers = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match file.split_once('.') {
            _ if file == "queue.json" => {}
            Some((n, "seg" | "mrk")) if n.len() == 8 && n.parse::<u32>().is_ok() => {
                numbers.push(n.parse::<u32>().expect("checked"));
            }
            _ => return Err(format!("{}: not a file of warren's message store", path.display())),
        }
    }
    numbers.sort_unstable();
    numbers.dedup();
    let mut messages = Vec::new();
    let mut segments = Vec::new();
    for number in numbers {
        let (seg, mrk) = segment_paths(dir, number);
        let bytes = match fs::read(&seg) {
            Ok(b) => Bytes::from(b),
            // Marks whose segment went: the segment was deleted first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Bytes::new(),
            Err(e) => return Err(format!("{}: {e}", seg.display())),
        };
        let read = records::read_messages(&bytes).map_err(|e| format!("{}: {e}", seg.display()))?;
        if let Some(at) = read.torn_at {
            warn!(
                "message store: {}: a record cut short at offset {at} ({} octets after it); the {} message(s) before it are recovered",
                seg.display(),
                bytes.len() as u64 - at,
                read.records.len()
            );
            truncate(&seg, at)?;
        }
        let marks_bytes = fs::read(&mrk).unwrap_or_default();
        let marks = records::read_marks(&marks_bytes).map_err(|e| format!("{}: {e}", mrk.display()))?;
        if let Some(at) = marks.torn_at {
            warn!("message store: {}: a mark cut short at offset {at}; dropped", mrk.display());
            truncate(&mrk, at)?;
        }
        let mut removed = HashSet::new();
        let mut delivered = HashSet::new();
        for (mark, seq) in marks.records {
            match mark {
                Mark::Removed => removed.insert(seq),
                Mark::Delivered => delivered.insert(seq),
            };
        }
        let first_seq = read.records.first().map(|m| m.seq);
        let before = messages.len();
        messages.extend(read.records.into_iter().filter(|m| !removed.contains(&m.seq)).map(|m| RecoveredMessage {
            seq: m.seq,
            redelivered: delivered.contains(&m.seq),
            message: m,
        }));
        let live = messages.len() - before;
        match first_seq {
            Some(first_seq) if live > 0 => segments.push(SegmentState { number, first_seq, live }),
            _ => {
                // Nothing left in it: it goes, as it would have at its last ack.
                let _ = fs::remove_file(&seg);
                let _ = fs::remove_file(&mrk);
            }
        }
    }
    Ok((messages, segments))
}

pub(super) fn segment_paths(dir: &Path, number: u32) -> (PathBuf, PathBuf) {
    (dir.join(format!("{number:08}.seg")), dir.join(format!("{number:08}.mrk")))
}

fn truncate(path: &Path, len: u64) -> Result<(), String> {
    let f = fs::OpenOptions::new().write(true).open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.set_len(len).and_then(|_| f.sync_all()).map_err(|e| format!("{}: {e}", path.display()))
}
