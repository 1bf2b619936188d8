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
    ///
    /// The cost is bounded by the trie's size times the key's word count
    /// (see `Walk`); a walk that runs long is finished with
    /// `block_in_place`, so that it holds up its own publisher but not the
    /// runtime's other tasks.
    pub fn route(&self, routing_key: &[u8], found: &mut impl FnMut(&T)) {
        let mut walk = Walk::new(&self.root, routing_key);
        if walk.run(QUICK_ROUTE_STEPS, found) {
            return;
        }
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            tokio::task::block_in_place(|| walk.run(usize::MAX, found));
        } else {
            walk.run(usize::MAX, found);
        }
    }
}

/// Steps a route may take on a runtime worker as an ordinary task step; a
/// walk that needs more (thousands of bindings full of `*` and `#`) hands
/// the worker's other tasks to another thread first. A step is well under
/// a microsecond, so this is about a millisecond.
const QUICK_ROUTE_STEPS: usize = 10_000;

/// One topic match in progress: a depth-first walk over (trie node, word
/// position) states with an explicit stack.
///
/// A naive walk tries every number of words at every `#`, and a key like
/// `#.#.#.#.#.#.#.#.z` against a 40-word routing key then takes billions of
/// paths to the same few states: exponential time, and one publish could
/// wedge a runtime worker for hours. Two observations make it polynomial:
///
/// - a state is a node and a position in the routing key, so there are at
///   most (nodes × (words + 1)) of them, and each needs visiting once;
/// - only a `#` edge can reach the same state twice (literal and `*` edges
///   always advance one word from a unique parent), and a `#` entered at
///   position p is entered at every later position too. So it is enough to
///   remember, per `#` node, the earliest position it was entered at: a
///   later entry is already covered.
///
/// Positions are byte offsets into the key; `end` (one past its length)
/// means no words are left, which differs from an empty last word.
struct Walk<'t, 'k, T> {
    key: &'k [u8],
    end: usize,
    stack: Vec<(&'t Node<T>, usize)>,
    /// `#` nodes entered so far, with the earliest position of each.
    hash_entries: HashEntries<T>,
}

impl<'t, 'k, T> Walk<'t, 'k, T> {
    fn new(root: &'t Node<T>, key: &'k [u8]) -> Self {
        let end = key.len() + 1;
        let start = if key.is_empty() { end } else { 0 };
        Walk { key, end, stack: vec![(root, start)], hash_entries: HashEntries::default() }
    }

    /// The word at `pos` and the position after it.
    fn word_at(&self, pos: usize) -> (&'k [u8], usize) {
        let rest = &self.key[pos..];
        match rest.iter().position(|&c| c == b'.') {
            Some(dot) => (&rest[..dot], pos + dot + 1),
            None => (rest, self.end),
        }
    }

    /// Visits up to `budget` states; true once the walk is complete.
    fn run(&mut self, budget: usize, found: &mut impl FnMut(&T)) -> bool {
        for _ in 0..budget {
            let Some((node, pos)) = self.stack.pop() else { return true };
            if let Some(hash) = &node.hash {
                // `#` swallows zero words, or one, or two… up to all of them.
                let covered_from = self.hash_entries.enter(hash, pos);
                let mut p = pos;
                while p < covered_from {
                    self.stack.push((hash, p));
                    p = if p == self.end { usize::MAX } else { self.word_at(p).1 };
                }
            }
            if pos == self.end {
                node.bound.iter().for_each(&mut *found);
                continue;
            }
            let (word, after) = self.word_at(pos);
            if let Some(child) = node.words.get(word) {
                self.stack.push((child, after));
            }
            if let Some(star) = &node.star {
                self.stack.push((star, after));
            }
        }
        self.stack.is_empty()
    }
}

/// For each `#` node entered, the earliest position it was entered at. A
/// short list (most routes meet a handful of `#`), a map past that.
struct HashEntries<T> {
    few: Vec<(*const Node<T>, usize)>,
    many: HashMap<*const Node<T>, usize>,
}

impl<T> Default for HashEntries<T> {
    fn default() -> Self {
        HashEntries { few: Vec::new(), many: HashMap::new() }
    }
}

impl<T> HashEntries<T> {
    /// Notes that `node` is entered at `pos`; returns the position from
    /// which it was already entered before (`usize::MAX`: never), so that
    /// the caller enters it at the positions in between.
    fn enter(&mut self, node: &Node<T>, pos: usize) -> usize {
        let node = node as *const Node<T>;
        let earliest = if let Some(e) = self.few.iter_mut().find(|(n, _)| *n == node) {
            &mut e.1
        } else if self.few.len() < 16 {
            self.few.push((node, usize::MAX));
            &mut self.few.last_mut().expect("just pushed").1
        } else {
            self.many.entry(node).or_insert(usize::MAX)
        };
        let before = *earliest;
        *earliest = before.min(pos);
        before
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

    /// The reference: RabbitMQ's matching rules as a direct recursion over
    /// words, exponential but obviously right, for small inputs.
    pub(crate) fn naive_match(pattern: &[&[u8]], key: &[&[u8]]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&b"#", rest)) => (0..=key.len()).any(|skip| naive_match(rest, &key[skip..])),
            Some((&b"*", rest)) => !key.is_empty() && naive_match(rest, &key[1..]),
            Some((word, rest)) => key.first() == Some(word) && naive_match(rest, &key[1..]),
        }
    }

    fn split(s: &[u8]) -> Vec<&[u8]> {
        if s.is_empty() {
            Vec::new()
        } else {
            s.split(|&c| c == b'.').collect()
        }
    }

    #[test]
    fn agrees_with_the_naive_matcher_on_every_small_case() {
        // Every pattern and key of up to four words over a, b, *, # and the
        // empty word: 3,906 × 1,365 pairs.
        fn all(alphabet: &[&str], max: usize) -> Vec<String> {
            let mut out = vec![String::new()];
            let mut layer = vec![Vec::<&str>::new()];
            for _ in 0..max {
                let mut next = Vec::new();
                for words in &layer {
                    for w in alphabet {
                        let mut v = words.clone();
                        v.push(w);
                        out.push(v.join("."));
                        next.push(v);
                    }
                }
                layer = next;
            }
            out
        }
        let patterns = all(&["a", "b", "*", "#", ""], 4);
        let keys = all(&["a", "b", ""], 4);
        for pattern in &patterns {
            let mut t = TopicTrie::default();
            t.insert(pattern.as_bytes(), ());
            for key in &keys {
                let mut hits = 0;
                t.route(key.as_bytes(), &mut |_| hits += 1);
                let expected = naive_match(&split(pattern.as_bytes()), &split(key.as_bytes()));
                assert_eq!(hits, usize::from(expected), "pattern {pattern:?} key {key:?}");
            }
        }
    }

    /// How many states a route visits.
    fn steps(t: &TopicTrie<u32>, key: &[u8]) -> (usize, Vec<u32>) {
        let mut walk = Walk::new(&t.root, key);
        let mut got = Vec::new();
        let mut n = 0;
        while !walk.run(1, &mut |d| got.push(*d)) {
            n += 1;
        }
        (n, got)
    }

    #[test]
    fn many_hashes_against_a_long_key_take_polynomial_steps() {
        // Sixteen `#` then `z`, against 64 words: the naive walk never
        // finished. Memoised, each of the 17 nodes is visited at most once per
        // position (65 positions).
        let mut t = TopicTrie::default();
        let pattern = format!("{}z", "#.".repeat(16));
        t.insert(pattern.as_bytes(), 1);
        let key = vec!["w"; 63].join(".") + ".z";
        let (n, got) = steps(&t, key.as_bytes());
        assert_eq!(got, [1]);
        assert!(n <= 18 * 65, "{n} steps");
        let miss = vec!["w"; 64].join(".");
        let (n, got) = steps(&t, miss.as_bytes());
        assert!(got.is_empty());
        assert!(n <= 18 * 65, "{n} steps");
    }

    #[test]
    fn a_long_walk_still_finds_everything() {
        // Enough different `*`/`#` bindings that the walk outgrows its quick
        // budget: binding i spells the low 11 bits of i as `*` (1) and `#` (0).
        let pattern = |i: u32| {
            let words: Vec<&str> = (0..11).map(|b| if i >> b & 1 == 1 { "*" } else { "#" }).collect();
            format!("{}.k{i}", words.join("."))
        };
        let mut t = TopicTrie::default();
        for i in 0..2_000u32 {
            t.insert(pattern(i).as_bytes(), i);
        }
        let key = vec!["w"; 100].join(".") + ".k1234";
        let mut got = Vec::new();
        t.route(key.as_bytes(), &mut |d| got.push(*d));
        // Only binding 1234 ends in k1234, and with six `#` and five `*` it
        // matches 100 words before it. (The naive matcher would take hours.)
        assert_eq!(got, [1234]);
        assert!(steps(&t, key.as_bytes()).0 > QUICK_ROUTE_STEPS, "the case must exercise the slow path");
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
