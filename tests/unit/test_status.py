"""The status vocabulary: members, groups and the legal-transition table."""

from __future__ import annotations

import itertools

import pytest

from procstatus import ProcessStatus
from procstatus.status import (
    COMPLETED,
    LEGAL_TRANSITIONS,
    PROCESSING,
    SCHEDULABLE,
    is_legal,
    values,
)

S = ProcessStatus
ALL = ["READY", "PENDING", "RUNNING", "WAITING_FOR_RESULT", "SUCCESS", "FAILURE"]


def test_members_are_exactly_the_six_strings():
    assert [m.value for m in S] == ALL
    assert [m.name for m in S] == ALL


@pytest.mark.parametrize("member", list(S))
def test_str_and_format_are_the_stored_value(member):
    assert str(member) == member.value
    assert f"{member}" == member.value
    assert member == member.value  # a str enum compares equal to its stored word
    assert S(member.value) is member


def test_unknown_word_is_not_a_status():
    with pytest.raises(ValueError):
        S("DONE")


def test_groups():
    assert S.processing() == {S.PENDING, S.RUNNING, S.WAITING_FOR_RESULT} == PROCESSING
    assert S.completed() == {S.SUCCESS, S.FAILURE} == COMPLETED
    assert SCHEDULABLE == {S.READY, S.SUCCESS, S.FAILURE}
    assert not PROCESSING & COMPLETED
    assert PROCESSING | SCHEDULABLE == set(S)
    assert isinstance(S.processing(), frozenset)


@pytest.mark.parametrize("member", list(S))
def test_is_processing_and_is_completed_properties(member):
    assert member.is_processing is (member in PROCESSING)
    assert member.is_completed is (member in COMPLETED)


LEGAL = {
    (S.READY, S.PENDING),
    (S.PENDING, S.RUNNING),
    (S.PENDING, S.FAILURE),
    (S.PENDING, S.READY),  # failed publish restores the previous state
    (S.PENDING, S.SUCCESS),
    (S.RUNNING, S.SUCCESS),
    (S.RUNNING, S.FAILURE),
    (S.RUNNING, S.WAITING_FOR_RESULT),
    (S.RUNNING, S.PENDING),  # a retry, or sent again after a lost worker
    (S.RUNNING, S.RUNNING),  # a redelivery takes over a lost run
    (S.WAITING_FOR_RESULT, S.RUNNING),
    (S.WAITING_FOR_RESULT, S.FAILURE),
    (S.SUCCESS, S.PENDING),
    (S.FAILURE, S.PENDING),
    # reset: the operator's override (processing states only with --force)
    (S.PENDING, S.READY),
    (S.RUNNING, S.READY),
    (S.WAITING_FOR_RESULT, S.READY),
    (S.SUCCESS, S.READY),
    (S.FAILURE, S.READY),
}


@pytest.mark.parametrize(
    "current,new", list(itertools.product(S, S)), ids=lambda s: s.value
)
def test_is_legal_matches_the_full_table(current, new):
    assert is_legal(current, new) is ((current, new) in LEGAL)


def test_a_few_transitions_by_name():
    assert is_legal(S.READY, S.PENDING)
    assert not is_legal(S.SUCCESS, S.RUNNING)
    assert not is_legal(S.READY, S.RUNNING)
    assert is_legal(S.RUNNING, S.PENDING)
    assert not is_legal(S.WAITING_FOR_RESULT, S.SUCCESS)
    assert [s for s in S if is_legal(s, s)] == [S.RUNNING]  # the only self-loop: a takeover


def test_every_status_has_a_row():
    assert set(LEGAL_TRANSITIONS) == set(S)


def test_values_are_sorted_strings():
    assert values(PROCESSING) == ["PENDING", "RUNNING", "WAITING_FOR_RESULT"]
    assert values(SCHEDULABLE) == ["FAILURE", "READY", "SUCCESS"]
    assert values({S.SUCCESS, S.FAILURE}) == ["FAILURE", "SUCCESS"]
    assert values(set()) == []
    assert all(type(v) is str for v in values(set(S)))


def test_the_writes_declare_exactly_the_table():
    """Each status write names its edges; together they are LEGAL_TRANSITIONS, no more."""
    from procstatus import transitions

    declared = set().union(*transitions.EDGES_BY_WRITE.values())
    table = {(a, b) for a, targets in LEGAL_TRANSITIONS.items() for b in targets}
    assert declared == table
    assert set(transitions.EDGES_BY_WRITE) == {
        "schedule", "unschedule", "start", "reclaim", "back_to_pending", "complete",
        "fail_run", "begin_join", "abandon_join", "schedule_next", "reset",
    }


def test_a_write_declaring_an_edge_outside_the_table_fails_at_import():
    from procstatus import transitions

    with pytest.raises(AssertionError, match="SUCCESS→RUNNING"):
        transitions.performs((S.SUCCESS, S.RUNNING))
