"""Who gets a message: the subscription index, shared-subscription selection and the retained store.

`SubscriptionIndex.match` answers for one topic in one trie walk and merges overlapping subscriptions
of a client into one `Target` (MQTT 5 §3.3.4: one delivery per client, the highest QoS, every
subscription identifier). Shared subscriptions (§4.8.2) live in a second trie keyed by (scope, group);
each matching group delivers to exactly one member, chosen round-robin, preferring connected members.
A group's name alone does not make a group: `$share/dispatch-workers/...` of two identities are two
groups unless the policy puts both in one scope (see `StoredSubscription.scope`), so joining someone
else's group name never takes their messages away.

The retained store keeps one message per topic in a tree by topic level so a SUBSCRIBE with a wildcard
walks only the branches its filter can reach, not all retained topics (a fleet keeps one retained mode
command per unit: tens of thousands).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from gateway.broker.message import Message
from gateway.broker.sessions import StoredSubscription
from gateway.mqtt.topics import SubscriptionTrie


@dataclass(slots=True)
class Target:
    """What one client gets for one message, merged over its matching subscriptions."""

    qos: int
    retain_as_published: bool
    subscription_ids: list[int] = field(default_factory=list)


class SharedGroup:
    """Members of one `$share/{group}/{filter}`; the rotation order is subscription order."""

    __slots__ = ("cursor", "members", "name", "order", "plain_filter", "scope")

    def __init__(self, name: str, plain_filter: str, scope: str | None = None) -> None:
        self.name = name
        self.plain_filter = plain_filter
        self.scope = scope
        self.members: dict[str, StoredSubscription] = {}
        self.order: list[str] = []
        self.cursor = 0

    @property
    def key(self) -> tuple[str | None, str, str]:
        """(scope, name, plain filter): how the index and the cluster name the group."""
        return self.scope, self.name, self.plain_filter

    def pick(
        self, connected: Callable[[str], bool], allowed: Callable[[str], bool], offline_too: bool = True
    ) -> tuple[str, StoredSubscription] | None:
        """The next member in rotation: a connected one if any will take it, else (`offline_too`) an
        offline one.

        `allowed` is asked lazily (it is a policy decision) and at most once per member.
        """
        n = len(self.order)
        offline: list[int] = []
        for step in range(n):
            i = (self.cursor + step) % n
            client_id = self.order[i]
            if not connected(client_id):
                offline.append(i)
                continue
            if allowed(client_id):
                return self._chose(i)
        if not offline_too:
            return None
        for i in offline:
            if allowed(self.order[i]):
                return self._chose(i)
        return None

    def _chose(self, i: int) -> tuple[str, StoredSubscription]:
        self.cursor = (i + 1) % len(self.order)
        client_id = self.order[i]
        return client_id, self.members[client_id]


Match = tuple[dict[str, Target], list[SharedGroup]]

# Told of every subscription added to or removed from the index (added, client id, subscription): the
# cluster's backbone subscribes on NATS to what local subscribers can match (gateway/app/backbone.py).
IndexWatcher = Callable[[bool, str, StoredSubscription], None]

# Distinct (topic, publisher) answers kept: every unit publishes its own few topics, so a fleet needs
# a few entries per unit (10,000 units with 8,192 entries and oldest-out missed on every message).
MATCH_CACHE_SIZE = 65_536


class SubscriptionIndex:
    """Subscriptions by filter, with the answers for recently published topics remembered.

    Telemetry repeats: a unit publishes the same few topics all day. `match` keeps its answer per
    (topic, publisher) until the next subscribe or unsubscribe anywhere, which empties the cache (so
    a cached answer is always what a fresh trie walk would say); a full cache is emptied too.
    Answers that are alike are one object: `fleet/TRK-1/telemetry/gps` and `.../TRK-2/...` reach
    the same clients, so ten thousand cached topics share one answer instead of holding ten thousand
    dicts, lists and Targets. That also keeps the cache from feeding the garbage collector's old
    generation. Callers must not modify an answer.
    """

    __slots__ = ("_answers", "_cache", "_direct", "_groups", "_shared", "version", "watcher")

    def __init__(self) -> None:
        self._direct: SubscriptionTrie[str, StoredSubscription] = SubscriptionTrie()
        self._shared: SubscriptionTrie[tuple[str | None, str], SharedGroup] = SubscriptionTrie()
        self._groups: dict[tuple[str | None, str, str], SharedGroup] = {}
        self._cache: dict[tuple[str, str | None], Match] = {}
        self._answers: dict[tuple[object, ...], Match] = {}  # each distinct answer, by what it says
        self.version = 0  # bumped by every add and remove: lets observers skip unchanged snapshots
        self.watcher: IndexWatcher | None = None  # None (a single node): nothing more per subscribe

    def __len__(self) -> int:
        return len(self._direct) + sum(len(g.members) for g in self._groups.values())

    def _forget(self) -> None:
        self._cache.clear()
        self._answers.clear()

    def add(self, client_id: str, sub: StoredSubscription) -> None:
        self._forget()
        self.version += 1
        if self.watcher is not None:
            self.watcher(True, client_id, sub)
        if sub.group is None:
            self._direct.add(sub.plain_filter, client_id, sub)
            return
        key = (sub.scope, sub.group, sub.plain_filter)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = SharedGroup(sub.group, sub.plain_filter, sub.scope)
            self._shared.add(sub.plain_filter, (sub.scope, sub.group), group)
        if client_id not in group.members:
            group.order.append(client_id)
        group.members[client_id] = sub

    def remove(self, client_id: str, sub: StoredSubscription) -> None:
        self._forget()
        self.version += 1
        if self.watcher is not None:
            self.watcher(False, client_id, sub)
        if sub.group is None:
            self._direct.remove(sub.plain_filter, client_id)
            return
        key = (sub.scope, sub.group, sub.plain_filter)
        group = self._groups.get(key)
        if group is None or client_id not in group.members:
            return
        del group.members[client_id]
        i = group.order.index(client_id)
        del group.order[i]
        if i < group.cursor:
            group.cursor -= 1
        if not group.members:
            del self._groups[key]
            self._shared.remove(sub.plain_filter, (sub.scope, sub.group))
        elif group.cursor >= len(group.order):
            group.cursor = 0

    def group(self, key: tuple[str | None, str, str]) -> SharedGroup | None:
        """The share group (scope, group, plain filter), if it has members here."""
        return self._groups.get(key)

    def match(self, topic: str, publisher: str | None) -> Match:
        """Direct targets by client id (no-local applied for `publisher`), and matching share groups."""
        key = (topic, publisher)
        cache = self._cache
        found = cache.get(key)
        if found is None:
            if len(cache) >= MATCH_CACHE_SIZE:
                self._forget()  # not oldest-out: deleting from a dict's front makes each next one slower
            found = cache[key] = self._shared_answer(self._match(topic, publisher))
        return found

    def _shared_answer(self, answer: Match) -> Match:
        targets, groups = answer
        says = (
            *((cid, t.qos, t.retain_as_published, *t.subscription_ids) for cid, t in targets.items()),
            *map(id, groups),  # the groups are the index's own objects, alive while it has them
        )
        return self._answers.setdefault(says, answer)

    def _match(self, topic: str, publisher: str | None) -> Match:
        targets: dict[str, Target] = {}
        for client_id, sub in self._direct.match(topic):
            options = sub.options
            if options.no_local and client_id == publisher:
                continue
            target = targets.get(client_id)
            if target is None:
                target = targets[client_id] = Target(options.qos, options.retain_as_published)
            else:
                target.qos = max(target.qos, options.qos)
                target.retain_as_published = target.retain_as_published or options.retain_as_published
            if sub.identifier is not None and sub.identifier not in target.subscription_ids:
                target.subscription_ids.append(sub.identifier)
        groups = [group for _, group in self._shared.match(topic)] if len(self._shared) else []
        return targets, groups


class _RetainedNode:
    __slots__ = ("children", "message")

    def __init__(self) -> None:
        self.children: dict[str, _RetainedNode] = {}
        self.message: Message | None = None


class RetainedStore:
    """One retained message per topic name."""

    __slots__ = ("_by_topic", "_root")

    def __init__(self) -> None:
        self._root = _RetainedNode()
        self._by_topic: dict[str, Message] = {}

    def __len__(self) -> int:
        return len(self._by_topic)

    def __contains__(self, topic: object) -> bool:
        return topic in self._by_topic

    def get(self, topic: str) -> Message | None:
        return self._by_topic.get(topic)

    def values(self) -> Iterator[Message]:
        return iter(list(self._by_topic.values()))

    def set(self, message: Message) -> None:
        node = self._root
        for level in message.topic.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _RetainedNode()
            node = child
        node.message = message
        self._by_topic[message.topic] = message

    def delete(self, topic: str) -> bool:
        if self._by_topic.pop(topic, None) is None:
            return False
        path: list[tuple[_RetainedNode, str]] = []
        node = self._root
        for level in topic.split("/"):
            path.append((node, level))
            node = node.children[level]
        node.message = None
        for parent, level in reversed(path):
            child = parent.children[level]
            if child.message is not None or child.children:
                break
            del parent.children[level]
        return True

    def match(self, plain_filter: str) -> list[Message]:
        """Retained messages whose topic the (valid, unshared) filter matches, §4.7 rules included."""
        if "+" not in plain_filter and "#" not in plain_filter:
            message = self._by_topic.get(plain_filter)
            return [] if message is None else [message]
        levels = plain_filter.split("/")
        n = len(levels)
        out: list[Message] = []
        stack: list[tuple[_RetainedNode, int]] = [(self._root, 0)]  # iterative: filters are peer input
        while stack:
            node, i = stack.pop()
            if i == n:
                if node.message is not None:
                    out.append(node.message)
                continue
            level = levels[i]
            if level == "#":
                if node.message is not None and i > 0:
                    out.append(node.message)  # "a/#" also matches "a" itself
                _collect_subtree(node, out, skip_dollar=i == 0)
            elif level == "+":
                for name, child in node.children.items():
                    if not (i == 0 and name.startswith("$")):  # §4.7.2
                        stack.append((child, i + 1))
            else:
                exact = node.children.get(level)
                if exact is not None:
                    stack.append((exact, i + 1))
        return out


def _collect_subtree(node: _RetainedNode, out: list[Message], *, skip_dollar: bool) -> None:
    stack = [child for name, child in node.children.items() if not (skip_dollar and name.startswith("$"))]
    while stack:
        current = stack.pop()
        if current.message is not None:
            out.append(current.message)
        stack.extend(current.children.values())
