//! A queue from many senders to one task, that allocates nothing while it
//! is empty and hands over everything queued at once.
//!
//! A connection's writer is fed by its channels, its heartbeat sender and
//! every queue it consumes from, and most connections are idle most of the
//! time. tokio's unbounded channel allocates a block of 32 slots when it is
//! made and keeps it; for the writer's 64-octet items that was 2 KB per
//! idle connection, a fifth of its memory. Here the queue is a `VecDeque`
//! behind a lock, allocated on the first send, and the receiver swaps it
//! for its own empty one: one lock per batch instead of one per item. The
//! lock is a std `Mutex`, held for a push or a swap and never across an
//! `.await`.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

pub struct Mailbox<T> {
    queue: Mutex<Queue<T>>,
    /// Signalled when an item lands in an empty queue.
    ready: Notify,
}

struct Queue<T> {
    items: VecDeque<T>,
    /// The receiver has gone: sends are refused.
    closed: bool,
}

impl<T> Default for Mailbox<T> {
    fn default() -> Self {
        Mailbox { queue: Mutex::new(Queue { items: VecDeque::new(), closed: false }), ready: Notify::new() }
    }
}

impl<T> Mailbox<T> {
    fn lock(&self) -> MutexGuard<'_, Queue<T>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `item`; false, and `item` dropped, once the receiver has
    /// closed the mailbox.
    pub fn send(&self, item: T) -> bool {
        let mut queue = self.lock();
        if queue.closed {
            return false;
        }
        let was_empty = queue.items.is_empty();
        queue.items.push_back(item);
        drop(queue);
        // Only the first item of a batch needs to wake the receiver: it
        // takes everything there is when it runs. `notify_one` keeps a
        // permit if the receiver is not waiting yet, so none is lost.
        if was_empty {
            self.ready.notify_one();
        }
        true
    }

    /// Waits until something is queued and moves all of it to the back of
    /// `into`. Cancel-safe: nothing is taken unless it returns.
    pub async fn take_all(&self, into: &mut VecDeque<T>) {
        loop {
            {
                let mut queue = self.lock();
                if !queue.items.is_empty() {
                    if into.is_empty() {
                        // The usual case: swap, and the senders get `into`'s
                        // allocation to fill next.
                        std::mem::swap(&mut queue.items, into);
                    } else {
                        into.extend(queue.items.drain(..));
                    }
                    return;
                }
            }
            self.ready.notified().await;
        }
    }

    /// The receiver is going: what is queued is dropped, and later sends
    /// are refused.
    pub fn close(&self) {
        let left = {
            let mut queue = self.lock();
            queue.closed = true;
            std::mem::take(&mut queue.items)
        };
        // Dropped outside the lock: items may hold messages whose drop
        // does work of its own.
        drop(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_batch_is_taken_whole_and_in_order() {
        let mailbox = Mailbox::default();
        for i in 0..5 {
            assert!(mailbox.send(i));
        }
        let mut batch = VecDeque::new();
        mailbox.take_all(&mut batch).await;
        assert_eq!(batch, [0, 1, 2, 3, 4]);
        // Items already in `into` stay in front.
        mailbox.send(5);
        mailbox.take_all(&mut batch).await;
        assert_eq!(batch, [0, 1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send_from_another_task() {
        let mailbox = Arc::new(Mailbox::default());
        let sender = mailbox.clone();
        let receiver = tokio::spawn(async move {
            let mut batch = VecDeque::new();
            mailbox.take_all(&mut batch).await;
            batch
        });
        tokio::task::yield_now().await;
        sender.send("first");
        assert_eq!(receiver.await.unwrap(), ["first"]);
    }

    #[tokio::test]
    async fn an_empty_mailbox_holds_no_allocation_and_a_closed_one_refuses() {
        let mailbox = Mailbox::default();
        assert_eq!(mailbox.lock().items.capacity(), 0);
        mailbox.send(Arc::new(1));
        let held = mailbox.lock().items[0].clone();
        mailbox.close();
        // What was queued is dropped, and nothing more gets in.
        assert_eq!(Arc::strong_count(&held), 1);
        assert!(!mailbox.send(held.clone()));
        assert_eq!(Arc::strong_count(&held), 1);
    }
}
