"""core.gate: when the hot breakpoints go in and come out."""

from __future__ import annotations

import pytest

from gdb_ftrace.core.gate import Gate, mutex_held

TASK = 0xFFFF888003A1C000  # a task_struct pointer as text_mutex.owner holds it


def test_mutex_owner_word():
    assert not mutex_held(0)
    assert not mutex_held(0x1)  # MUTEX_FLAG_WAITERS left with no owner
    assert mutex_held(TASK) and mutex_held(TASK | 0x3)


def test_disarmed_gate_never_interrupts():
    g = Gate(quiet_s=0.1)
    assert not g.wants_interrupt(100.0) and not g.may_interrupt(100.0)


def test_a_trigger_arms_and_quiet_asks_for_an_interrupt():
    g = Gate(quiet_s=0.1, settle_s=0.05)
    g.triggered(10.0)
    assert g.armed and g.stats.arms == 1
    assert not g.wants_interrupt(10.05)  # not quiet yet
    g.stopped(10.08)  # a handler hit keeps it armed
    assert not g.wants_interrupt(10.15)
    assert g.wants_interrupt(10.19)
    g.interrupt_sent(10.19)
    assert not g.wants_interrupt(10.5)  # one interrupt in flight ...
    assert g.wants_interrupt(10.19 + g.retry_s)  # ... retried if its stop never came
    assert g.expects_interrupt(10.3) and not g.expects_interrupt(10.19 + g.retry_s)


def test_no_interrupt_right_after_a_stop_of_ours():
    """gdb steps over the breakpoint right after stop() returns; an interrupt then is a #DB."""
    g = Gate(quiet_s=0.1, settle_s=0.05)
    g.triggered(1.0)
    assert g.wants_interrupt(1.2)
    g.stopped(1.21)  # a hit between the timer's decision and gdb's thread
    assert not g.may_interrupt(1.23)
    assert g.may_interrupt(1.27)


@pytest.mark.parametrize("owner, open_events, landings", [(TASK, 0, 0), (0, 1, 0), (0, 0, 1)])
def test_stays_armed_while_the_kernel_patches(owner, open_events, landings):
    g = Gate()
    g.triggered(0.0)
    g.interrupt_sent(0.2)
    assert not g.at_interrupt_stop(0.21, owner, open_events, landings)
    assert g.armed and g.stats.busy == 1 and g.interrupt_at is None
    assert not g.wants_interrupt(0.25) and g.wants_interrupt(0.21 + g.quiet_s)


@pytest.mark.parametrize("owner", [0, 0x1, None])
def test_disarms_when_text_mutex_is_free_and_nothing_is_open(owner):
    g = Gate()
    g.triggered(0.0)
    g.interrupt_sent(0.2)
    assert g.at_interrupt_stop(0.21, owner, 0, 0)
    assert not g.armed and g.stats.disarms == 1
    g.triggered(5.0)
    assert g.armed and g.stats.arms == 2
