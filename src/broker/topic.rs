//! Topic routing: a trie over the words of binding keys, as RabbitMQ's
//! `rabbit_exchange_type_topic` keeps one, so that routing a message costs
//! what its key's words cost, not what the number of bindings costs.
//!
//! Words are separated by `.`. In a binding key `*` stands for exactly one
//! word and `#` for zero or more. A key is split exactly as RabbitMQ's
//! `split_topic_key` does: the empty key has no words at all (so `*` does
//! not match it but `#` does), and empty words count (`a..b` is three words,
//! `a.` two).
//!
//! Each trie node has an edge per literal word plus one for `*` and one for
//! `#`; a binding sits at the node its key's last word leads to. Matching a
//! routing key walks the literal edge and the `*` edge for each word, and at
//! a `#` edge tries every number of skipped words.

use std::collections::HashMap;

/// Binding keys to destinations of type `T`; `T` is compared with `==` to
/// remove a binding.
pub struct TopicTrie<T> {
    root: Node<T>,
}

struct Node<T> {
    /// Literal words. Owned copies of the words: binding keys arrive as
    /// slices of a connection's read buffer, which must not stay pinned for
    /// as long as a binding lives.
    words: HashMap<Box<[u8]>, Node<T>>,
    star: Option<Box<Node<T>>>,
    hash: Option<Box<Node<T>>>,
    /// Destinations whose binding key ends at this node.
    bound: Vec<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node { words: HashMap::new(), star: None, hash: None, bound: Vec::new() }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.bound.is_empty() && self.words.is_empty() && self.star.is_none() && self.hash.is_none()
    }
}

impl<T> Default for TopicTrie<T> {
    fn default() -> Self {
        TopicTrie { root: Node::default() }
    }
}

/// The first word of `rest` and what follows it. `None` means no words
/// are left; `Some(b"")` is one empty word.
fn next_word(rest: &[u8]) -> (&[u8], Option<&[u8]>) {
    match rest.iter().position(|&c| c == b'.') {
        Some(dot) => (&rest[..dot], Some(&rest[dot + 1..])),
        None => (rest, None),
    }
}

/// A key's words as the matcher walks them: the empty key has none.
fn words_of(key: &[u8]) -> Option<&[u8]> {
    (!key.is_empty()).then_some(key)
}

impl<T: PartialEq> TopicTrie<T> {
    /// Adds `dest` under `binding_key`, unless it is already there.
    pub fn insert(&mut self, binding_key: &[u8], dest: T) {
        let mut node = &mut self.root;
        let mut rest = words_of(binding_key);
        while let Some(r) = rest {
            let (word, after) = next_word(r);
            node = match word {
                b"*" => node.star.get_or_insert_with(Box::default),
                b"#" => node.hash.get_or_insert_with(Box::default),
                _ => node.words.entry(word.into()).or_default(),
            };
            rest = after;
        }
        if !node.bound.contains(&dest) {
            node.bound.push(dest);
        }
    }

    /// Removes `dest` from under `binding_key` and prunes the nodes left
    /// empty; returns whether it was there.
    pub fn remove(&mut self, binding_key: &[u8], dest: &T) -> bool {
        fn go<T: PartialEq>(node: &mut Node<T>, rest: Option<&[u8]>, dest: &T) -> bool {
            let Some(r) = rest else {
                let before = node.bound.len();
                node.bound.retain(|d| d != dest);
                return node.bound.len() != before;
            };
            let (word, after) = next_word(r);
            let removed;
            match word {
                b"*" | b"#" => {
                    let slot = if word == b"*" { &mut node.star } else { &mut node.hash };
                    let Some(child) = slot else { return false };
                    removed = go(child, after, dest);
                    if child.is_empty() {
                        *slot = None;
                    }
                }
                _ => {
                    let Some(child) = node.words.get_mut(word) else { return false };
                    removed = go(child, after, dest);
                    if child.is_empty() {
                        node.words.remove(word);
                    }
                }
            }
            removed
        }
        go(&mut self.root, words_of(binding_key), dest)
    }

    /// Removes `dest` wherever it is bound (its queue or exchange is gone);
    /// returns how many binding keys it was bound with.
    pub fn remove_everywhere(&mut self, dest: &T) -> usize {
        fn go<T: PartialEq>(node: &mut Node<T>, dest: &T) -> usize {
            let before = node.bound.len();
            node.bound.retain(|d| d != dest);
            let mut n = before - node.bound.len();
            node.words.retain(|_, child| {
                n += go(child, dest);
                !child.is_empty()
            });
            for slot in [&mut node.star, &mut node.hash] {
                if let Some(child) = slot {
                    n += go(child, dest);
                    if child.is_empty() {
                        *slot = None;
                    }
                }
            }
            n
        }
        go(&mut self.root, dest)
    }

    /// Calls `found` with every destination whose binding key matches
    /// `routing_key`. A destination bound with several matching keys is
    /// reported once per key; the caller removes repeats.
    pub fn route(&self, routing_key: &[u8], found: &mut impl FnMut(&T)) {
        walk(&self.root, words_of(routing_key), found);
    }
}

fn walk<T>(node: &Node<T>, rest: Option<&[u8]>, found: &mut impl FnMut(&T)) {
    if let Some(hash) = &node.hash {
        // `#` swallows zero words, then one, then two… up to all of them.
        let mut skipped = rest;
        loop {
            walk(hash, skipped, found);
            match skipped {
                Some(r) => skipped = next_word(r).1,
                None => break,
            }
        }
    }
    match rest {
        None => node.bound.iter().for_each(&mut *found),
        Some(r) => {
            let (word, after) = next_word(r);
            if let Some(child) = node.words.get(word) {
                walk(child, after, found);
            }
            if let Some(star) = &node.star {
                walk(star, after, found);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, key: &str) -> bool {
        let mut t = TopicTrie::default();
        t.insert(pattern.as_bytes(), 1);
        let mut hit = false;
        t.route(key.as_bytes(), &mut |_| hit = true);
        hit
    }

    #[test]
    fn rabbitmq_matching_rules() {
        let cases = [
            ("a.b.c", "a.b.c", true),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.c", false),
            ("a.*.c", "a..c", true),
            ("a.#", "a", true),
            ("a.#", "a.b.c", true),
            ("a.#.c", "a.c", true),
            ("a.#.c", "a.b.b.c", true),
            ("a.#.c", "a.b.b.d", false),
            ("#", "", true),
            ("#", "a.b", true),
            ("*", "", false),
            ("*", "a", true),
            ("*", "a.b", false),
            ("", "", true),
            ("", "a", false),
            ("#.c", "a.b.c", true),
            ("a.b", "a.b.c", false),
            ("a..b", "a..b", true),
            ("a..b", "a.b", false),
            ("a.", "a.", true),
            ("a.*", "a.", true),
            ("a.", "a", false),
            ("*.*", ".", true),
            ("#.#", "a", true),
            ("*.#", "", false),
            ("*.#", "a", true),
            ("#.*", "a.b.c", true),
            ("a.#.#.b", "a.b", true),
        ];
        for (pattern, key, expected) in cases {
            assert_eq!(matches(pattern, key), expected, "pattern {pattern:?} key {key:?}");
        }
    }

    #[test]
    fn remove_prunes_and_keeps_other_bindings() {
        let mut t = TopicTrie::default();
        t.insert(b"a.*.c", 1);
        t.insert(b"a.*.c", 2);
        t.insert(b"a.#", 3);
        assert!(t.remove(b"a.*.c", &1));
        assert!(!t.remove(b"a.*.c", &1));
        assert!(!t.remove(b"x.y", &1));
        let mut got = Vec::new();
        t.route(b"a.b.c", &mut |d| got.push(*d));
        got.sort();
        assert_eq!(got, [2, 3]);
        assert_eq!(t.remove_everywhere(&2), 1);
        assert!(t.remove(b"a.#", &3));
        assert!(t.root.is_empty());
    }

    #[test]
    fn many_bindings_route_by_words() {
        let mut t = TopicTrie::default();
        for i in 0..10_000 {
            t.insert(format!("stock.{i}.*").as_bytes(), i);
        }
        let mut got = Vec::new();
        t.route(b"stock.4242.nyse", &mut |d| got.push(*d));
        assert_eq!(got, [4242]);
    }
}
