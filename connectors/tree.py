"""Conversation trees rebuilt from parent links only (never from `children` lists).

ChatGPT's 2026 shards have no `children` key and Claude's export only has
`parent_message_uuid`, so both connectors derive the tree from each node's parent. A tree
is whole only when every parent exists and no parent chain loops; `ParentTree.problem`
says what is wrong otherwise, and `ParentTree.broken` which nodes a defect cuts off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

SortKey = Callable[[str], Any]


@dataclass
class ParentTree:
    """Nodes (id -> payload) with their parent links, checked for existence and cycles.

    `problem` describes the first defect found. When the defect is confined to nodes cut
    off from every root (a cycle, or nodes below a missing parent), those nodes are listed
    in `broken`: a caller may `drop_broken` them and use the intact rest. An empty `broken`
    with a `problem` means the tree is unusable whole. The check is linear in the number of
    nodes, whatever the shape.
    """

    nodes: dict[str, Any] = field(default_factory=dict)
    parent: dict[str, str | None] = field(default_factory=dict)
    children: dict[str, list[str]] = field(default_factory=dict)
    problem: str | None = None
    broken: set[str] = field(default_factory=set)

    @classmethod
    def build(cls, items: Iterable[tuple[str, str | None, Any]]) -> ParentTree:
        """A tree from (id, parent id or None, payload) triples, in input order."""
        tree = cls()
        for nid, parent, payload in items:
            if nid in tree.nodes:
                tree.problem = f"node id {nid} occurs twice"
                return tree
            tree.nodes[nid] = payload
            tree.parent[nid] = parent
        return cls.link(tree.nodes, tree.parent)

    @classmethod
    def link(cls, nodes: dict[str, Any], parent: dict[str, str | None]) -> ParentTree:
        """A tree from ready `nodes` (id -> payload) and `parent` (id -> parent id or None)."""
        tree = cls(nodes=nodes, parent=parent)
        children = tree.children
        roots: list[str] = []
        dangling: tuple[str, str] | None = None
        for nid, p in parent.items():
            if p is None:
                roots.append(nid)
            elif p in nodes:
                if p in children:
                    children[p].append(nid)
                else:
                    children[p] = [nid]
            elif dangling is None:
                dangling = (nid, p)
        tree._check_reachable(roots, dangling)
        return tree

    def _check_reachable(self, roots: list[str], dangling: tuple[str, str] | None) -> None:
        """Find the nodes no root reaches; name the defect (one pass over the tree)."""
        reached = set(roots)
        stack = list(roots)
        children = self.children
        while stack:
            kids = children.get(stack.pop())
            if kids:
                reached.update(kids)
                stack.extend(kids)
        if len(reached) == len(self.nodes):
            return
        self.broken = {n for n in self.nodes if n not in reached}
        if dangling is not None:
            nid, p = dangling
            self.problem = f"node {nid} has parent {p}, which does not exist"
            return
        # No missing parent: every cut-off chain ends in a loop. Walk one up to it.
        cur = next(n for n in self.nodes if n not in reached)
        seen: set[str] = set()
        while cur not in seen:
            seen.add(cur)
            up = self.parent[cur]
            assert up is not None  # a node with no parent is a root, and roots are reached
            cur = up
        self.problem = f"parent links form a cycle through node {cur}"

    def drop_broken(self) -> int:
        """Remove the `broken` nodes (see the class docstring); returns how many.

        Their parents are broken or missing too, so no kept node loses a child.
        """
        for nid in self.broken:
            del self.nodes[nid]
            del self.parent[nid]
            self.children.pop(nid, None)
        dropped = len(self.broken)
        self.broken = set()
        self.problem = None
        return dropped

    def leaves(self) -> list[str]:
        """Nodes without children, in input order."""
        return [n for n in self.nodes if n not in self.children]

    def path_to(self, leaf: str, stop: set[str] | None = None) -> list[str]:
        """Nodes from the root (or from just below the first node in `stop`) down to `leaf`."""
        path: list[str] = []
        cur: str | None = leaf
        while cur is not None and (stop is None or cur not in stop):
            path.append(cur)
            cur = self.parent[cur]
        path.reverse()
        return path

    def leaves_depth_first(self, key: SortKey) -> list[str]:
        """Leaves in depth-first order, siblings sorted by `key`: a deterministic order."""
        roots = sorted((n for n, p in self.parent.items() if p is None), key=key)
        leaves: list[str] = []
        stack = list(reversed(roots))
        while stack:
            nid = stack.pop()
            kids = self.children.get(nid)
            if kids:
                stack.extend(sorted(kids, key=key, reverse=True))
            else:
                leaves.append(nid)
        return leaves

    def branches(self, canonical_leaf: str, key: SortKey) -> list[tuple[str, list[str]]]:
        """The canonical path, then each other branch as (leaf, nodes after its fork).

        Every node lands in exactly one returned path, so counts stay exact: a branch holds
        only the nodes no earlier path took, and its first node's parent is the fork.
        """
        first = self.path_to(canonical_leaf)
        done = set(first)
        out = [(canonical_leaf, first)]
        for leaf in self.leaves_depth_first(key):
            if leaf in done:
                continue
            segment = self.path_to(leaf, stop=done)
            done.update(segment)
            out.append((leaf, segment))
        return out

    def conversations(
        self, canonical_leaf: str, key: SortKey, conv_id: str, all_branches: bool
    ) -> tuple[list[tuple[list[str], str, bool]], int]:
        """What to stage of the tree: (path, conversation id, is a branch) per conversation,
        and how many nodes are left out.

        The canonical path is `conv_id`. With `all_branches`, each other branch follows as
        `<conv_id>:<its leaf>` (see `branches`) and nothing is left out; otherwise every
        node off the canonical path is.
        """
        if all_branches:
            staged = [
                (path, conv_id if i == 0 else f"{conv_id}:{leaf}", i > 0)
                for i, (leaf, path) in enumerate(self.branches(canonical_leaf, key))
            ]
            return staged, 0
        path = self.path_to(canonical_leaf)
        return [(path, conv_id, False)], len(self.nodes) - len(path)


def running_times(
    path: list[str],
    raw: Callable[[str], float | None],
    before: float | None,
    fallback: float | None,
) -> list[tuple[float | None, dict[str, Any] | None]]:
    """Effective times along `path` that never decrease, with notes on adjusted ones.

    A node's time is its own (`raw`), raised to the time before it when earlier (the raw
    value goes in the note as `create_time_raw`); a node without a time takes the time
    before it (`time_source: ancestor`), or `fallback` when there is none
    (`time_source: conversation`; the caller makes `fallback` no later than any node's own
    time, so the result still never decreases). `before` is the effective time of the
    path's parent, None when it had no timed ancestor. The note is None when the node's own
    time was used as-is.
    """
    out: list[tuple[float | None, dict[str, Any] | None]] = []
    for nid in path:
        t = raw(nid)
        if t is None:
            if before is not None:
                out.append((before, {"time_source": "ancestor"}))
            else:  # not carried on: later nodes still have no timed ancestor
                out.append((fallback, {"time_source": "conversation"}))
        elif before is not None and t < before:
            out.append((before, {"create_time_raw": t}))
        else:
            out.append((t, None))
            before = t
    return out
