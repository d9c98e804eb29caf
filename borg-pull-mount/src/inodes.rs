//! The bounded inode table: inode number -> (parent, name, the attributes its listing carried).
//!
//! Inodes are numbered in the order entries are first seen and never reused during a mount (borg
//! runs with `--files-cache mtime,size`, so their values need not survive the run). A node is only
//! valid for `lookup` while it belongs to its parent's current listing (`seen_in`).

use std::collections::HashMap;
use std::time::Instant;

use crate::remote::Attrs;

/// The root's inode number (FUSE's).
pub(crate) const ROOT: u64 = 1;

#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) parent: u64,
    pub(crate) name: Box<[u8]>,
    pub(crate) attrs: Attrs,
    /// When `attrs` arrived.
    pub(crate) fetched: Instant,
    /// The id of the parent's listing that last named this entry.
    pub(crate) seen_in: u64,
    pub(crate) depth: usize,
}

/// The table is full (its bound).
#[derive(Debug)]
pub(crate) struct Full;

#[derive(Debug)]
pub(crate) struct Inodes {
    nodes: Vec<Node>,
    children: HashMap<u64, HashMap<Box<[u8]>, u64>>,
    root_path: Vec<u8>,
    max: usize,
}

impl Inodes {
    pub(crate) fn new(root_path: Vec<u8>, root_attrs: Attrs, max: usize) -> Self {
        let root = Node {
            parent: ROOT,
            name: Box::default(),
            attrs: root_attrs,
            fetched: Instant::now(),
            seen_in: 0,
            depth: 0,
        };
        Inodes {
            nodes: vec![root],
            children: HashMap::new(),
            root_path,
            max,
        }
    }

    pub(crate) fn get(&self, ino: u64) -> Option<&Node> {
        let index = usize::try_from(ino.checked_sub(1)?).ok()?;
        self.nodes.get(index)
    }

    fn get_mut(&mut self, ino: u64) -> Option<&mut Node> {
        let index = usize::try_from(ino.checked_sub(1)?).ok()?;
        self.nodes.get_mut(index)
    }

    pub(crate) fn child(&self, parent: u64, name: &[u8]) -> Option<u64> {
        self.children.get(&parent)?.get(name).copied()
    }

    /// Records an entry of `parent`'s listing `listing_id`, keeping its inode if known.
    pub(crate) fn upsert(
        &mut self,
        parent: u64,
        name: &[u8],
        attrs: Attrs,
        listing_id: u64,
        now: Instant,
    ) -> Result<u64, Full> {
        if let Some(ino) = self.child(parent, name) {
            if let Some(node) = self.get_mut(ino) {
                node.attrs = attrs;
                node.fetched = now;
                node.seen_in = listing_id;
            }
            return Ok(ino);
        }
        if self.nodes.len() >= self.max {
            return Err(Full);
        }
        let depth = self.get(parent).map_or(0, |p| p.depth + 1);
        self.nodes.push(Node {
            parent,
            name: name.into(),
            attrs,
            fetched: now,
            seen_in: listing_id,
            depth,
        });
        let ino = self.nodes.len() as u64;
        self.children.entry(parent).or_default().insert(name.into(), ino);
        Ok(ino)
    }

    pub(crate) fn set_attrs(&mut self, ino: u64, attrs: Attrs, now: Instant) {
        if let Some(node) = self.get_mut(ino) {
            node.attrs = attrs;
            node.fetched = now;
        }
    }

    /// The remote path of `ino`: the root path joined with the names up the parent chain.
    pub(crate) fn path(&self, ino: u64) -> Option<Vec<u8>> {
        let mut names: Vec<&[u8]> = Vec::new();
        let mut at = ino;
        // Bounded: every step goes to a smaller inode number (a parent is known before its child).
        while at != ROOT {
            let node = self.get(at)?;
            names.push(&node.name);
            if node.parent >= at {
                return None;
            }
            at = node.parent;
        }
        let mut path = self.root_path.clone();
        for name in names.iter().rev() {
            if !path.ends_with(b"/") {
                path.push(b'/');
            }
            path.extend_from_slice(name);
        }
        Some(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_names_under_the_root_and_keep_inodes_stable() {
        let now = Instant::now();
        let mut table = Inodes::new(b"/srv".to_vec(), Attrs::default(), 3);
        let a = table.upsert(ROOT, b"a", Attrs::default(), 1, now).unwrap();
        let b = table.upsert(a, b"b\xff", Attrs::default(), 2, now).unwrap();
        assert_eq!(table.path(ROOT).unwrap(), b"/srv");
        assert_eq!(table.path(b).unwrap(), b"/srv/a/b\xff");
        assert_eq!(table.upsert(ROOT, b"a", Attrs::default(), 3, now).unwrap(), a);
        assert_eq!(table.get(a).unwrap().seen_in, 3);
        assert!(
            table.upsert(ROOT, b"c", Attrs::default(), 3, now).is_err(),
            "bound of 3 nodes"
        );
    }

    #[test]
    fn the_root_slash_gives_absolute_paths() {
        let mut table = Inodes::new(b"/".to_vec(), Attrs::default(), 10);
        let a = table
            .upsert(ROOT, b"etc", Attrs::default(), 1, Instant::now())
            .unwrap();
        assert_eq!(table.path(a).unwrap(), b"/etc");
    }
}
