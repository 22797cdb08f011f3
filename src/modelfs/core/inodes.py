"""The inode table: stable inode numbers for paths, with the kernel's lookup counts.

Invariants:
- one live `Node` per path; a path's inode number stays the same while the kernel knows it
  (lookup count > 0) or a handle is open, so the kernel's page cache stays attached to it;
- a node is dropped in `forget` once its lookup count and open count are both zero (never in
  unlink: the kernel may still hold it); the root is never dropped;
- if a path changes kind (file <-> directory) it gets a new node and inode number.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from modelfs.errors import NotFound
from modelfs.objects import ObjectInfo
from modelfs.write.files import StagedInfo

ROOT_INODE = 1  # FUSE's fixed root inode number


@dataclass
class Node:
    ino: int
    path: str  # relative to the mount root; '' is the root
    is_dir: bool
    # files: the object version last seen in the bucket, or what the writer has staged
    info: ObjectInfo | StagedInfo | None
    lookups: int = 0
    opens: int = 0
    last_open_etag: str | None = None  # to decide whether the kernel may keep its page cache


class InodeTable:
    def __init__(self) -> None:
        self._next = itertools.count(ROOT_INODE + 1)
        root = Node(ROOT_INODE, "", True, None, lookups=1)
        self._by_ino: dict[int, Node] = {ROOT_INODE: root}
        self._by_path: dict[str, Node] = {"": root}

    def __len__(self) -> int:
        return len(self._by_ino)

    def get(self, ino: int) -> Node:
        node = self._by_ino.get(ino)
        if node is None:
            raise NotFound(f"unknown inode {ino}")
        return node

    def by_path(self, path: str) -> Node | None:
        return self._by_path.get(path)

    def upsert(self, path: str, is_dir: bool, info: ObjectInfo | StagedInfo | None) -> Node:
        """The node for `path`, created or updated with what the bucket says now."""
        node = self._by_path.get(path)
        if node is not None and node.is_dir == is_dir:
            node.info = info
            return node
        if node is not None:
            self._detach(node)
        node = Node(next(self._next), path, is_dir, info)
        self._by_ino[node.ino] = node
        self._by_path[path] = node
        return node

    def forget(self, ino: int, count: int) -> None:
        node = self._by_ino.get(ino)
        if node is None or ino == ROOT_INODE:
            return
        node.lookups = max(0, node.lookups - count)
        self._drop_if_unused(node)

    def release(self, node: Node) -> None:
        node.opens = max(0, node.opens - 1)
        self._drop_if_unused(node)

    def remove_path(self, path: str) -> None:
        """The path is gone (unlinked or renamed away); its node lives on until forgotten."""
        node = self._by_path.get(path)
        if node is not None and node.ino != ROOT_INODE:
            del self._by_path[path]

    def move(self, old: str, new: str) -> None:
        """A file was renamed (directories are never renamed: the core answers EXDEV)."""
        node = self._by_path.pop(old, None)
        if node is None:
            return
        replaced = self._by_path.pop(new, None)
        if replaced is not None:
            self._drop_if_unused(replaced)
        node.path = new
        self._by_path[new] = node

    def _drop_if_unused(self, node: Node) -> None:
        if node.lookups == 0 and node.opens == 0 and node.ino != ROOT_INODE:
            self._detach(node)

    def _detach(self, node: Node) -> None:
        self._by_ino.pop(node.ino, None)
        if self._by_path.get(node.path) is node:
            del self._by_path[node.path]
