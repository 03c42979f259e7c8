"""Pure logic of overload control: the expected-wait estimator and the fair waiting queue."""

from __future__ import annotations

import pickle

import pytest

from core.llm.engine.admission import (
    Overloaded,
    Pending,
    Throughput,
    expected_wait,
    retry_after_s,
)
from core.llm.engine.fairness import FairQueue
from core.llm.engine.scheduler import Scheduler
from core.llm.engine.sequence import Sequence, Status
from core.llm.sampling import SamplingParams


def speed(prefill_tok_s: float = 100.0, decode_step_s: float = 0.1) -> Throughput:
    s = Throughput()
    s.prefill_tok_s, s.decode_step_s = prefill_tok_s, decode_step_s
    return s


def test_free_slot_waits_only_for_prefill():
    # 2 slots, 1 running: the new request starts at once; its 50 tokens take 0.5 s to prefill
    wait = expected_wait([Pending(0, 30)], [], 2, 50, speed())
    assert wait == pytest.approx(0.5)


def test_full_slots_wait_for_the_earliest_finisher_and_the_queue_ahead():
    running = [Pending(0, 30), Pending(0, 10)]
    # no queue: the slot freed after 10 steps (1 s), then own prefill of 100 tokens (1 s)
    assert expected_wait(running, [], 2, 100, speed()) == pytest.approx(2.0)
    # one waiting ahead takes that slot (and holds it 50 steps); next free: the 30-step one
    ahead = [Pending(20, 50)]
    assert expected_wait(running, ahead, 2, 100, speed()) == pytest.approx(3.0 + 1.2)


def test_wait_grows_with_the_queue_and_shrinks_with_speed():
    running = [Pending(0, 100)] * 4
    short = expected_wait(running, [Pending(10, 100)] * 4, 4, 10, speed())
    long = expected_wait(running, [Pending(10, 100)] * 12, 4, 10, speed())
    assert long > short
    assert expected_wait(running, [Pending(10, 100)] * 12, 4, 10, speed(decode_step_s=0.01)) < long


def test_step_time_follows_the_batch_size():
    s = Throughput()
    for _ in range(30):  # on this "machine" a step costs 10 ms + 5 ms per row
        for rows in (1, 4, 8):
            s.observe("decode", rows, 0.010 + 0.005 * rows)
    assert s.step_s(16) == pytest.approx(0.090, rel=1e-3)  # a burst runs at a larger batch
    assert s.step_s(1) == pytest.approx(0.015, rel=1e-3)
    # the estimator uses the batch the wait runs at: 16 rows here, not the 1 measured last
    wait = expected_wait([Pending(0, 10)] * 16, [], 16, 0, s)
    assert wait == pytest.approx(10 * 0.090, rel=1e-3)


def test_one_batch_size_seen_gives_its_mean():
    s = Throughput()
    for _ in range(10):
        s.observe("decode", 4, 0.02)
    assert s.step_s(16) == pytest.approx(0.02)


def test_throughput_ewma_moves_toward_measurements():
    s = Throughput()
    for _ in range(50):
        s.observe("decode", 8, 0.2)
        s.observe("prefill", 1000, 0.5)
    assert s.decode_step_s == pytest.approx(0.2, rel=1e-3)
    assert s.prefill_tok_s == pytest.approx(2000, rel=1e-3)
    s.observe("decode", 0, 0.0)  # ignored: nothing measured
    assert s.decode_step_s == pytest.approx(0.2, rel=1e-3) and s.step_s(8) == pytest.approx(0.2)


def test_retry_after_is_whole_seconds_in_range():
    assert retry_after_s(12.2, 10) == 3
    assert retry_after_s(10.01, 10) == 1
    assert retry_after_s(500, 10) == 60


def test_overloaded_keeps_its_fields_across_pickling():
    exc = pickle.loads(pickle.dumps(Overloaded("busy", 7, "expected_wait")))
    assert (str(exc), exc.retry_after_s, exc.reason) == ("busy", 7, "expected_wait")


def seq(tenant: str) -> Sequence:
    return Sequence([1, 2, 3], SamplingParams(max_tokens=4), None, lambda _: None, tenant=tenant)


def test_flooding_tenant_cannot_starve_a_late_one():
    q = FairQueue()
    for _ in range(50):
        q.append(seq("flood"))
    first = q.popleft()
    light = seq("light")
    q.append(light)
    assert first.tenant == "flood"
    assert q.popleft() is light  # the very next free slot, not the back of the flood's queue


def test_turns_alternate_and_follow_weights():
    q = FairQueue({"a": 2, "b": 1})
    for _ in range(30):
        q.append(seq("a"))
        q.append(seq("b"))
    order = "".join(q.popleft().tenant for _ in range(30))
    assert order.count("a") == 20 and order.count("b") == 10
    assert "aaa" not in order and "bb" not in order


def test_fifo_within_a_tenant_and_remove():
    q = FairQueue()
    seqs = [seq("a") for _ in range(3)]
    for s in seqs:
        q.append(s)
    q.remove(seqs[1])
    assert len(q) == 2 and seqs[1] not in q
    assert [q.popleft(), q.popleft()] == [seqs[0], seqs[2]]
    assert not q
    with pytest.raises(IndexError):
        q.popleft()


def test_idle_tenant_keeps_no_credit():
    q = FairQueue()
    q.append(seq("a"))
    q.popleft()  # "a" empties: its turn and deficit are gone
    for _ in range(3):
        q.append(seq("b"))
    for _ in range(3):
        q.append(seq("a"))
    order = "".join(q.popleft().tenant for _ in range(6))
    assert order == "bababa"


def test_ahead_of_new_counts_own_queue_and_others_fair_share():
    q = FairQueue()
    for _ in range(10):
        q.append(seq("flood"))
    assert len(q.ahead_of_new("light")) == 1  # one of the flood's goes before the newcomer
    q.append(seq("light"))
    assert len(q.ahead_of_new("light")) == 1 + 2
    assert len(q.ahead_of_new("flood")) == 10 + 1


def decoding_flood(n_slots: int, waiting: int = 0) -> tuple[Scheduler, list[Sequence]]:
    """A scheduler whose every slot decodes one tenant's ("flood") requests."""
    sched = Scheduler(n_slots, 512)
    for _ in range(n_slots + waiting):
        sched.waiting.append(seq("flood"))
    running = sched.admit()
    for s in running:
        s.status = Status.DECODING
    return sched, running


def test_a_tenant_below_its_share_takes_a_slot_from_the_flood_and_it_settles():
    sched, running = decoding_flood(4, waiting=2)
    assert sched.preemptions() == []  # one tenant: nothing to share
    assert sched.entitled("light") and not sched.entitled("flood")
    light = [seq("light") for _ in range(4)]
    sched.waiting.append(light[0])
    moves = sched.preemptions()
    assert moves == [(running[-1], "light")]  # the flood's newest gives its slot up
    assert sched.hand_over(*moves[0]) is light[0] and light[0].slot == 3
    paused = running[-1]
    assert paused.status is Status.WAITING and paused.slot == -1 and next(iter(sched.waiting)) is paused
    light[0].status = Status.DECODING
    assert sched.preemptions() == []  # settled: flood 3 >= its share 2, light 1 <= 2
    for s in light[1:]:
        sched.waiting.append(s)
    moves = sched.preemptions()  # light is owed one more slot (2 of 4), not three
    assert [(v.tenant, t) for v, t in moves] == [("flood", "light")]
    sched.hand_over(*moves[0]).status = Status.DECODING
    assert sched.preemptions() == [] and not sched.entitled("light")
    held = [s.tenant for s in sched.active]
    assert held.count("flood") == 2 and held.count("light") == 2


def test_weights_set_the_shares_slots_are_handed_over_by():
    sched, _ = decoding_flood(4)
    sched.waiting.weights = {"flood": 3, "light": 1}
    for _ in range(3):
        sched.waiting.append(seq("light"))
    assert len(sched.preemptions()) == 1  # light's share: 1 of 4


def test_quota_buckets_refuse_with_retry_after_and_take_back_unused_tokens():
    from serve_app.errors import APIError
    from serve_app.quotas import QuotaArgs, Quotas

    quotas = Quotas({"*": QuotaArgs(requests_per_min=2), "big": QuotaArgs(tokens_per_min=100)})
    quotas.admit("x")
    quotas.admit("x")
    with pytest.raises(APIError) as over:
        quotas.admit("x")
    assert over.value.status == 429 and over.value.kind == "requests"
    assert 1 <= int(over.value.headers["Retry-After"]) <= 30
    quotas.admit("y")  # each tenant has its own bucket
    quotas.admit("big")
    quotas.spend_tokens("big", 150)  # in debt: the next request is refused
    with pytest.raises(APIError) as debt:
        quotas.admit("big")
    assert debt.value.kind == "tokens"
    quotas.give_back("big", 120)  # it generated less than it reserved
    quotas.admit("big")


def test_ingress_view_refuses_early_as_the_engine_would_counting_what_it_admitted_since():
    import asyncio

    from core.llm.engine.admission import queue_state
    from serve_app.errors import APIError
    from serve_app.overload import LoadView

    speed = Throughput()
    speed.prefill_tok_s, speed.decode_step_s = 1000.0, 0.1  # no steps seen: 0.1 s a step

    class LLMLoad:  # stands in for the LLM handle's `load.remote()`: an engine snapshot
        def __init__(self) -> None:
            self.load, self.polls = self, 0

        async def remote(self) -> dict:
            self.polls += 1
            # two slots: one busy for 20 more steps, one free
            running = [Pending(0, 20)]
            queues = {t: queue_state(running, [], 2) for t in ("a", "*")}
            return {"queues": {t: vars(q) | {"free_at": list(q.free_at)} for t, q in queues.items()},
                    "step_s": [speed.step_s(1), speed.step_s(2)], "slots": 2,
                    "prefill_tok_s": speed.prefill_tok_s}

    async def scenario() -> None:
        llm = LLMLoad()
        view = LoadView(llm, max_queue_wait_s=5.0)
        # no view yet: the first request waits for the first poll instead of passing unseen
        first = await view.check("a", 100)
        assert llm.polls == 1 and first is not None
        # the engine would give it the free slot; the next one waits for the busy slot's 20
        # steps (2 s): fine; then both slots are held for 100+ steps: 10 s > 5 s, refused
        second = await view.check("a", 100)
        with pytest.raises(APIError) as refused:
            await view.check("a", 100)
        assert refused.value.status == 503 and int(refused.value.headers["Retry-After"]) >= 5
        engine_view = queue_state([Pending(0, 20)], [Pending(0, 100), Pending(0, 100)], 2)
        assert view.expected_wait("a") == pytest.approx(
            engine_view.wait(0, 2, speed.step_s, speed.prefill_tok_s))
        assert await view.check("b", 100) is not None  # another tenant: its own queue ("*")
        view.release_unsent(second)  # a cache hit: it never reaches the engine
        third = await view.check("a", 100)
        assert third is not None
        view.sent(first, 10, 100)
        view.release_unsent(first)  # it went to the engine: counted until a poll includes it
        view.release_unsent(third)  # a 400 from validation: it never went
        assert first in view.reservations and third not in view.reservations
        view._task.cancel()

    asyncio.run(scenario())


def test_view_pools_the_replicas_of_the_llm_deployment():
    """With several LLM replicas the view counts all their slots: one replica's snapshot taken for
    the whole deployment refused what the others had room for (half of 64 streams on 4 GPU
    replicas)."""
    import asyncio

    from core.llm.engine.admission import queue_state
    from serve_app.overload import LoadView, Reservation, pooled_wait

    speed = Throughput()
    speed.prefill_tok_s, speed.decode_step_s = 1000.0, 0.1

    def snapshot(replica: str) -> dict:  # two slots: one busy for 20 more steps, one free
        q = queue_state([Pending(0, 20)], [], 2)
        return {"queues": {"*": vars(q) | {"free_at": list(q.free_at)}}, "replica": replica,
                "step_s": [speed.step_s(1), speed.step_s(2)], "slots": 2,
                "prefill_tok_s": speed.prefill_tok_s}

    two_admitted = [Reservation("a", 100), Reservation("a", 100)]
    alone = pooled_wait([snapshot("r1")], "a", two_admitted)
    pooled = pooled_wait([snapshot("r1"), snapshot("r2")], "a", two_admitted)
    # one replica: both free-or-soon slots go to the admitted two, the next waits 100 steps
    assert alone == pytest.approx(100 * speed.step_s(2))
    # two: the admitted take the two free slots; the next one gets a busy slot after 20 steps,
    # at the per-replica batch of 2
    assert pooled == pytest.approx(20 * speed.step_s(2))

    class Replicas:  # Serve's router: each load() call lands on the next replica
        def __init__(self) -> None:
            self.load, self.calls = self, 0

        async def remote(self) -> dict:
            self.calls += 1
            return snapshot(f"r{self.calls % 2}")

    async def scenario() -> None:
        view = LoadView(Replicas(), max_queue_wait_s=5.0)
        await view.check("a", 100)
        for _ in range(40):  # polls until both replicas are in the pool
            if len(view.replicas) == 2:
                break
            await asyncio.sleep(0.05)
        assert set(view.replicas) == {"r0", "r1"}
        # 4 slots over 2 replicas: two more 100-token requests fit where one replica's view
        # (2 slots) would refuse the third at 10 s > 5 s
        assert await view.check("a", 100) is not None
        assert await view.check("a", 100) is not None

    asyncio.run(scenario())
