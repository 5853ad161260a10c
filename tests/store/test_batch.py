"""Batch coalescing: what cancels out inside one batch never reaches the plan."""

from __future__ import annotations

import pytest

from amqpd.store import Batch, BindingRecord, ExchangeRecord, QueueRecord, UserRecord
from amqpd.store.batch import Cascade

Q = ("/", "q")


def test_put_then_delete_in_one_batch_leaves_nothing() -> None:
    batch = Batch()
    batch.put_message(1, "", "q", b"h", b"body")
    batch.put_entry(Q, 1, 1)
    batch.update_entry(Q, 1, 1, True)
    batch.delete_entry(Q, 1)
    plan = batch.plan()
    assert plan.messages == ()
    assert plan.entries == ()
    assert plan.is_empty


def test_a_message_is_written_only_with_a_surviving_entry() -> None:
    batch = Batch()
    batch.put_message(1, "", "q", b"h", b"one")
    batch.put_message(2, "", "q", b"h", b"two")
    batch.put_entry(Q, 1, 1)
    batch.put_entry(("/", "r"), 1, 1)
    batch.put_entry(Q, 2, 2)
    batch.delete_entry(Q, 1)
    plan = batch.plan()
    assert [(m.message_id, m.refs) for m in plan.messages] == [(1, 1), (2, 1)]
    batch2 = Batch()
    batch2.put_message(3, "", "q", b"h", b"orphan")  # no entry at all
    assert batch2.plan().is_empty


def test_update_of_a_new_entry_folds_into_its_insert() -> None:
    batch = Batch()
    batch.put_message(1, "", "q", b"h", b"b")
    batch.put_entry(Q, 5, 1, 99.5)
    batch.update_entry(Q, 5, 3, True)
    (changes,) = batch.plan().entries
    assert changes.puts == ((5, 1, 3, True, 99.5),)
    assert changes.updates == () and changes.deletes == ()


def test_operations_on_stored_entries() -> None:
    batch = Batch()
    batch.update_entry(Q, 1, 2, True)
    batch.update_entry(Q, 1, 3, True)  # last one wins
    batch.delete_entry(Q, 2)
    batch.update_entry(Q, 2, 9, True)  # after the delete: ignored
    batch.delete_entry(Q, 3)
    batch.put_entry(Q, 3, 7)  # seq reused after a delete: replace the stored row
    (changes,) = batch.plan().entries
    assert changes.updates == ((1, 3, True),)
    assert changes.deletes == (2, 3)
    assert changes.puts == ((3, 7, 0, False, None),)
    assert batch.plan().extra_refs == {7: 1}  # message 7 was stored by an earlier batch


def test_deleting_a_queue_drops_what_the_batch_had_for_it() -> None:
    batch = Batch()
    batch.put_queue(QueueRecord("/", "q", True, False, {}))
    batch.put_binding(BindingRecord("/", "amq.direct", "queue", "q", "k", {}))
    batch.put_binding(BindingRecord("/", "amq.direct", "queue", "other", "k", {}))
    batch.put_message(1, "", "q", b"h", b"b")
    batch.put_entry(Q, 1, 1)
    batch.delete_queue("/", "q")
    plan = batch.plan()
    assert plan.cascades == (Cascade("queue", "/", "q"),)
    assert plan.queues == () and plan.messages == () and plan.entries == ()
    assert [b.destination for b, _ in plan.bindings_put] == ["other"]


def test_redeclare_after_delete_in_one_batch() -> None:
    batch = Batch()
    batch.delete_queue("/", "q")
    batch.put_queue(QueueRecord("/", "q", True, False, {"x-max-length": 5}))
    batch.put_message(1, "", "q", b"h", b"b")
    batch.put_entry(Q, 1, 1)  # seq 1 of the new queue; the old one may have had a seq 1
    plan = batch.plan()
    assert plan.cascades == (Cascade("queue", "/", "q"),)
    assert len(plan.queues) == 1
    assert plan.entries[0].deletes == ()  # the cascade removes the old rows first


def test_deleting_an_exchange_or_vhost_drops_pending_dependents() -> None:
    batch = Batch()
    batch.put_exchange(ExchangeRecord("v", "e", "direct", True, False, False, {}))
    batch.put_binding(BindingRecord("v", "e", "queue", "q", "", {}))
    batch.put_binding(BindingRecord("v", "x", "exchange", "e", "", {}))
    batch.put_binding(BindingRecord("v", "x", "queue", "q", "", {}))
    batch.delete_exchange("v", "e")
    assert [b.source for b, _ in batch.plan().bindings_put] == ["x"]

    batch = Batch()
    batch.put_vhost("v")
    batch.put_queue(QueueRecord("v", "q", True, False, {}))
    batch.put_queue(QueueRecord("w", "q", True, False, {}))
    batch.put_message(1, "", "q", b"h", b"b")
    batch.put_entry(("v", "q"), 1, 1)
    batch.delete_vhost("v")
    plan = batch.plan()
    assert plan.vhosts == () and plan.messages == ()
    assert [q.vhost for q, _ in plan.queues] == ["w"]
    assert plan.cascades == (Cascade("vhost", "v", "v"),)


def test_binding_put_and_delete_last_one_wins() -> None:
    binding = BindingRecord("/", "e", "queue", "q", "k", {"x-match": "all"})
    batch = Batch()
    batch.put_binding(binding)
    batch.delete_binding(binding)
    plan = batch.plan()
    assert plan.bindings_put == ()
    assert len(plan.bindings_deleted) == 1  # it may exist from an earlier batch


def test_users() -> None:
    batch = Batch()
    batch.put_user(UserRecord("a", "h1", ("administrator",)))
    batch.put_user(UserRecord("a", "h2"))
    batch.put_user(UserRecord("b", "h"))
    batch.delete_user("b")
    plan = batch.plan()
    assert plan.users_put == (UserRecord("a", "h2"),)
    assert plan.users_deleted == ("b",)


def test_len_and_bool_count_pending_changes() -> None:
    batch = Batch()
    assert not batch and len(batch) == 0
    batch.put_message(1, "", "q", b"h", b"b")
    batch.put_entry(Q, 1, 1)
    batch.put_vhost("/")
    assert len(batch) == 3
    batch.delete_entry(Q, 1)
    assert len(batch) == 2  # the entry coalesced away; the message waits for commit


def test_bad_arguments_fail_at_put_time() -> None:
    batch = Batch()
    with pytest.raises(TypeError, match="x-bad"):
        batch.put_queue(QueueRecord("/", "q", True, False, {"x-bad": object()}))


def test_a_planned_batch_is_sealed() -> None:
    batch = Batch()
    batch.put_vhost("/")
    plan = batch.plan()
    assert batch.sealed and batch.plan() is plan
    with pytest.raises(RuntimeError):
        batch.put_vhost("other")
