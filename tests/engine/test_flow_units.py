"""Units of flow control: the GCRA, admission under concurrency limits, and key and priority values."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from steplog.engine import compile_expression
from steplog.engine.flow import Admission, Constraint
from steplog.engine.flow.gcra import Gcra
from steplog.engine.flow.keys import key_of, priority_of

# -- GCRA -------------------------------------------------------------------------------------


def starts_at(gcra: Gcra, times: list[float]) -> list[float]:
    """When each arrival (at ``times``) may start, each queued behind the previous ones."""
    tat: float | None = None
    out = []
    for t in times:
        start = gcra.earliest(tat, t)
        tat = gcra.after(tat, start)
        out.append(start)
    return out


def test_gcra_of_limit_period_burst() -> None:
    assert Gcra.of(2, timedelta(seconds=10), 3) == Gcra(emission=5.0, tolerance=15.0)


def test_gcra_without_burst_starts_one_per_emission_interval() -> None:
    assert starts_at(Gcra.of(2, timedelta(seconds=10), 0), [0.0] * 4) == [0.0, 5.0, 10.0, 15.0]


@pytest.mark.parametrize("burst", [1, 2, 5])
def test_gcra_starts_burst_plus_one_at_once_then_one_per_interval(burst: int) -> None:
    gcra = Gcra.of(1, timedelta(seconds=4), burst)
    assert starts_at(gcra, [100.0] * (burst + 3)) == [100.0] * (burst + 1) + [104.0, 108.0]


def test_gcra_allows_only_burst_plus_one_at_once() -> None:
    gcra = Gcra.of(3, timedelta(seconds=3), 1)
    tat = None
    allowed = 0
    while gcra.allows(tat, 50.0):
        tat = gcra.after(tat, 50.0)
        allowed += 1
    assert allowed == 2
    assert gcra.earliest(tat, 50.0) == 51.0
    assert gcra.allows(tat, 51.0)


def test_gcra_earliest_is_now_without_state_or_when_the_tat_is_past() -> None:
    gcra = Gcra.of(1, timedelta(seconds=10), 0)
    assert gcra.earliest(None, 7.0) == 7.0
    assert gcra.earliest(5.0, 7.0) == 7.0
    assert gcra.earliest(20.0, 7.0) == 20.0


def test_gcra_after_moves_the_tat_from_the_later_of_tat_and_start() -> None:
    gcra = Gcra.of(1, timedelta(seconds=10), 0)
    assert gcra.after(None, 3.0) == 13.0
    assert gcra.after(20.0, 3.0) == 30.0
    assert gcra.after(2.0, 3.0) == 13.0


def test_gcra_an_idle_bucket_recovers_its_burst() -> None:
    gcra = Gcra.of(1, timedelta(seconds=10), 1)
    assert starts_at(gcra, [0.0, 0.0, 0.0, 100.0, 100.0, 100.0]) == [0.0, 0.0, 10.0, 100.0, 100.0, 110.0]


@given(
    st.integers(1, 5), st.integers(1, 20), st.integers(0, 3),
    st.lists(st.integers(0, 100), min_size=1, max_size=30).map(sorted),
)
def test_gcra_starts_in_order_never_early_and_at_most_limit_plus_burst_per_period(
    limit: int, period: int, burst: int, arrivals: list[int]
) -> None:
    gcra = Gcra.of(limit, timedelta(seconds=period), burst)
    starts = starts_at(gcra, [float(t) for t in arrivals])
    assert all(start >= arrival for start, arrival in zip(starts, arrivals))
    assert starts == sorted(starts)
    for start in starts:
        assert sum(start <= other < start + period - 1e-9 for other in starts) <= limit + burst


# -- Admission --------------------------------------------------------------------------------


def test_admission_admits_up_to_the_limit_per_key() -> None:
    admission = Admission()
    assert admission.offer("a1", "f", (("a", 2),), 0.0)
    assert admission.offer("a2", "f", (("a", 2),), 0.0)
    assert not admission.offer("a3", "f", (("a", 2),), 0.0)
    assert admission.offer("b1", "f", (("b", 2),), 0.0)
    assert admission.counts() == {"a": 2, "b": 1}
    assert admission.is_waiting("a3") and not admission.holds("a3")
    assert admission.release("a1") == [("f", "a3")]
    assert admission.holds("a3") and admission.executing("a") == 2


def test_admission_serves_a_key_first_in_first_out() -> None:
    admission = Admission()
    assert admission.offer("h", "f", (("k", 1),), 0.0)
    for index in range(4):
        assert not admission.offer(f"w{index}", "f", (("k", 1),), 1.0)
    order = []
    current = "h"
    for _ in range(4):
        [(_, current)] = admission.release(current)
        order.append(current)
    assert order == ["w0", "w1", "w2", "w3"]
    assert admission.release(current) == []
    assert admission.counts() == {}


def test_admission_a_new_run_does_not_pass_queued_runs_when_a_slot_is_free() -> None:
    admission = Admission()
    admission.offer("h1", "f", (("k", 2),), 0.0)
    admission.offer("h2", "f", (("k", 2),), 0.0)
    admission.offer("w", "f", (("k", 2),), 1.0)
    admission.offer("h3", "g", (("other", 1),), 0.0)
    assert admission.release("h1") == [("f", "w")]
    assert not admission.offer("late", "f", (("k", 2),), 2.0)


def test_admission_two_constraints_wait_on_the_full_one_and_move_when_it_frees() -> None:
    admission = Admission()
    assert admission.offer("holds-a", "f", (("a", 1),), 0.0)
    assert not admission.offer("r", "f", (("a", 1), ("b", 1)), 1.0)
    assert admission.offer("holds-b", "g", (("b", 1),), 2.0)  # b is free and nobody waits on it
    assert admission.release("holds-a") == []  # r now waits on b
    assert admission.is_waiting("r")
    assert admission.counts() == {"b": 1}
    assert admission.release("holds-b") == [("f", "r")]
    assert admission.counts() == {"a": 1, "b": 1}
    assert admission.release("r") == []
    assert admission.counts() == {}


def test_admission_orders_waiting_runs_by_rank() -> None:
    admission = Admission()
    admission.offer("h", "f", (("k", 1),), 0.0)
    for run_id, rank in [("late", 10.0), ("urgent", -50.0), ("middle", 5.0), ("early", 1.0)]:
        assert not admission.offer(run_id, "f", (("k", 1),), rank)
    order = []
    current = "h"
    while started := admission.release(current):
        [(_, current)] = started
        order.append(current)
    assert order == ["urgent", "early", "middle", "late"]


def test_admission_release_of_a_waiting_run_withdraws_it() -> None:
    admission = Admission()
    admission.offer("h", "f", (("k", 1),), 0.0)
    admission.offer("w1", "f", (("k", 1),), 1.0)
    admission.offer("w2", "f", (("k", 1),), 2.0)
    assert admission.release("w1") == []
    assert not admission.is_waiting("w1")
    assert admission.waiting_count() == 1
    assert admission.release("h") == [("f", "w2")]
    assert not admission.holds("w1")


def test_admission_offering_a_run_twice_changes_nothing() -> None:
    admission = Admission()
    assert admission.offer("h", "f", (("k", 1),), 0.0)
    assert not admission.offer("h", "f", (("k", 1),), 0.0)
    assert admission.executing("k") == 1
    admission.offer("w", "f", (("k", 1),), 1.0)
    assert not admission.offer("w", "f", (("k", 1),), 1.0)
    assert admission.waiting_count() == 1


def test_admission_an_env_key_is_checked_against_each_owners_own_limit() -> None:
    admission = Admission()
    assert admission.offer("b1", "big", (("env:k", 3),), 0.0)
    assert not admission.offer("s1", "small", (("env:k", 1),), 1.0)  # 1 running >= small's limit 1
    assert not admission.offer("b2", "big", (("env:k", 3),), 2.0)  # may not pass s1, waiting ahead on the key
    assert admission.release("b1") == [("small", "s1"), ("big", "b2")]
    assert admission.executing("env:k") == 2
    assert admission.offer("b3", "big", (("env:k", 3),), 3.0)
    assert not admission.offer("b4", "big", (("env:k", 3),), 4.0)
    assert admission.executing("env:k") == 3


def test_admission_holds_no_slot_after_every_release() -> None:
    admission = Admission()
    runs = [(f"r{i}", (("fn", 2), (f"key{i % 3}", 1))) for i in range(9)]
    for run_id, constraints in runs:
        admission.offer(run_id, "f", constraints, 0.0)
    while any(admission.holds(run_id) for run_id, _ in runs):
        for run_id, _ in runs:
            if admission.holds(run_id):
                admission.release(run_id)
    assert admission.counts() == {}
    assert admission.waiting_count() == 0


KEYS = ["a", "b", "c"]


@st.composite
def operations(draw: st.DrawFn, mixed_limits: bool) -> list[tuple[Any, ...]]:
    """("offer", owner, constraints, rank) | ("release", n) (the n-th holder) | ("withdraw", n) (a waiting run)."""
    limits = {(owner, key): draw(st.integers(1, 3)) for owner in ("f", "g") for key in KEYS}
    if not mixed_limits:
        limits.update({("g", key): limits[("f", key)] for key in KEYS})
    ops: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["offer", "offer", "release", "withdraw"]))
        if kind == "offer":
            owner = draw(st.sampled_from(["f", "g"]))
            keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=2, unique=True))
            constraints = tuple((key, limits[(owner, key)]) for key in keys)
            ops.append(("offer", owner, constraints, float(draw(st.integers(-5, 5)))))
        else:
            ops.append((kind, draw(st.integers(0, 100))))
    return ops


class Model:
    """Drives an Admission and checks each admission against the limits the run was admitted under."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.constraints: dict[str, tuple[Constraint, ...]] = {}
        self.admitted: list[str] = []
        self.holding: list[str] = []
        self.withdrawn: set[str] = set()

    def admit(self, run_id: str, later: tuple[str, ...] = ()) -> None:
        """``later``: runs the same release started after this one (their slots were not taken yet)."""
        self.admitted.append(run_id)
        self.holding.append(run_id)
        assert self.admission.holds(run_id)
        for key, limit in self.constraints[run_id]:
            taken_later = sum(key in dict(self.constraints[other]) for other in later)
            assert self.admission.executing(key) - taken_later <= limit

    def offer(self, run_id: str, owner: str, constraints: tuple[Constraint, ...], rank: float) -> None:
        self.constraints[run_id] = constraints
        if self.admission.offer(run_id, owner, constraints, rank):
            self.admit(run_id)
        else:
            assert self.admission.is_waiting(run_id)

    def release(self, run_id: str) -> None:
        self.holding.remove(run_id)
        started = [admitted for _, admitted in self.admission.release(run_id)]
        for index, admitted in enumerate(started):
            self.admit(admitted, tuple(started[index + 1:]))

    def check_counts(self) -> None:
        expected: dict[str, int] = {}
        for run_id in self.holding:
            for key, _ in self.constraints[run_id]:
                expected[key] = expected.get(key, 0) + 1
        assert self.admission.counts() == expected

    def smallest_holder_limits_hold(self) -> None:
        for key in KEYS:
            limits = [limit for run_id in self.holding for k, limit in self.constraints[run_id] if k == key]
            if limits:
                assert self.admission.executing(key) <= min(limits)


def run_model(ops: list[tuple[Any, ...]], uniform: bool) -> Model:
    model = Model(Admission())
    for index, op in enumerate(ops):
        if op[0] == "offer":
            model.offer(f"r{index}", op[1], op[2], op[3])
        elif op[0] == "release" and model.holding:
            model.release(model.holding[op[1] % len(model.holding)])
        elif op[0] == "withdraw":
            waiting = [run_id for run_id in model.constraints
                       if model.admission.is_waiting(run_id) and run_id not in model.withdrawn]
            if waiting:
                run_id = waiting[op[1] % len(waiting)]
                model.withdrawn.add(run_id)
                started = [admitted for _, admitted in model.admission.release(run_id)]  # runs it held back
                assert run_id not in started
                for position, admitted in enumerate(started):
                    model.admit(admitted, tuple(started[position + 1:]))
                assert not model.admission.is_waiting(run_id)
        model.check_counts()
        if uniform:
            model.smallest_holder_limits_hold()
    while model.holding:
        model.release(model.holding[0])
        model.check_counts()
        if uniform:
            model.smallest_holder_limits_hold()
    return model


def check_everyone_admitted_once(model: Model) -> None:
    assert model.admission.counts() == {}
    assert model.admission.waiting_count() == 0
    assert sorted(model.admitted) == sorted(set(model.admitted))
    assert set(model.admitted) == set(model.constraints) - model.withdrawn
    assert not set(model.admitted) & model.withdrawn


@given(operations(mixed_limits=False))
def test_admission_with_one_limit_per_key_never_exceeds_it_and_admits_every_run_once(
    ops: list[tuple[Any, ...]],
) -> None:
    check_everyone_admitted_once(run_model(ops, uniform=True))


@given(operations(mixed_limits=True))
def test_admission_with_limits_per_owner_admits_within_the_runs_own_limit_and_every_run_once(
    ops: list[tuple[Any, ...]],
) -> None:
    check_everyone_admitted_once(run_model(ops, uniform=False))


# -- keys and priorities ----------------------------------------------------------------------


def expression(source: str, result: Any = "any") -> Any:
    return compile_expression(source, names=("event",), result=result)


def test_key_of_uses_a_string_result_as_it_is() -> None:
    errors: list[str] = []
    assert key_of(expression("event.data.user"), {"data": {"user": "u-1"}}, errors, "throttle.key") == "u-1"
    assert key_of(expression("'openai'"), {"data": {}}, errors, "throttle.key") == "openai"
    assert errors == []


@pytest.mark.parametrize(
    ("value", "key"),
    [(7, "7"), (1.5, "1.5"), (True, "true"), (None, "null"), ([1, "a"], '[1,"a"]'), ({"b": 1, "a": 2}, '{"a":2,"b":1}')],
)
def test_key_of_uses_the_json_text_of_other_results(value: Any, key: str) -> None:
    errors: list[str] = []
    assert key_of(expression("event.data.v"), {"data": {"v": value}}, errors, "throttle.key") == key
    assert errors == []


def test_key_of_is_text_so_a_number_and_its_text_are_one_key() -> None:
    errors: list[str] = []
    number = key_of(expression("event.data.v"), {"data": {"v": 1}}, errors, "throttle.key")
    text = key_of(expression("event.data.v"), {"data": {"v": "1"}}, errors, "throttle.key")
    assert number == text == "1"


def test_key_of_without_an_expression_is_empty() -> None:
    errors: list[str] = []
    assert key_of(None, {"data": {"v": 1}}, errors, "throttle.key") == ""
    assert errors == []


def test_key_of_a_failing_expression_is_empty_and_the_error_recorded() -> None:
    errors: list[str] = ["earlier"]
    assert key_of(expression("event.data.missing.x"), {"data": {}}, errors, "concurrency.key") == ""
    assert len(errors) == 2
    assert errors[1].startswith("concurrency.key: ") and "missing" in errors[1]


@pytest.mark.parametrize(
    ("value", "priority"), [(0, 0), (120, 120), (-30, -30), (600, 600), (601, 600), (-10_000, -600), (2.9, 2)]
)
def test_priority_of_is_clipped_to_600_seconds_either_way(value: Any, priority: int) -> None:
    errors: list[str] = []
    assert priority_of(expression("event.data.p", "number"), {"data": {"p": value}}, errors, 600) == priority
    assert errors == []


def test_priority_of_without_an_expression_is_zero() -> None:
    errors: list[str] = []
    assert priority_of(None, {"data": {}}, errors, 600) == 0
    assert errors == []


@pytest.mark.parametrize("data", [{}, {"p": "high"}, {"p": True}, {"p": None}])
def test_priority_of_a_failing_expression_is_zero_and_the_error_recorded(data: dict[str, Any]) -> None:
    errors: list[str] = []
    assert priority_of(expression("event.data.p", "number"), {"data": data}, errors, 600) == 0
    assert len(errors) == 1 and errors[0].startswith("priority.run: ")


def test_priority_of_an_infinite_result_does_not_raise() -> None:
    errors: list[str] = []
    value = priority_of(expression("event.data.a / event.data.b", "number"), {"data": {"a": 1.0, "b": 0.0}},
                        errors, 600)
    assert value in (600, 0)


@pytest.mark.parametrize(
    "data",
    [{"k": "a"}, {"k": 1}, {"k": 1.5}, {"k": True}, {"k": None}, {"k": {"b": [1, "x"]}}, {"k": [2, 1]}, {}, {"x": 1}],
)
def test_a_plain_field_key_gives_what_cel_gives(data: dict[str, Any]) -> None:
    plain, cel = [], []
    fast = key_of(expression("event.data.k"), {"data": data}, plain, "throttle.key")
    slow = key_of(expression("(event.data.k)"), {"data": data}, cel, "throttle.key")  # not a plain path: CEL
    assert fast == slow
    assert bool(plain) == bool(cel)
