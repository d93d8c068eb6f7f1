"""Proc classes for the dashboard's tests, run by their own worker
(``tests.support.dashboard_app``, which knows these classes only, so the dashboard
started with ``-A tests.support.dashboard_app`` shows just them).

A :class:`Shipment` packs :class:`Parcel` children; each parcel reports numeric progress
and waits on a gate (a Redis list the test pushes to) before each step, so the test sees
its progress move on the page; parcel 2 fails, to give the failures a cause.
"""

from __future__ import annotations

import os

import redis
from mongoengine import IntField, ObjectIdField, StringField

from devtools import services
from procstatus import Proc, ProcessStatus, process

DASHBOARD_QUEUE = os.environ.get("PROCSTATUS_TEST_QUEUE", "procstatus-tests") + "-dashboard"
STEPS = 3


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(services.gate_redis_url(), socket_timeout=150)


def gate_key(pk: object) -> str:
    return f"procstatus-test:dashboard-gate:{pk}"


class Shipment(Proc):
    """A parent: packs ``count`` parcels and waits for them."""

    meta = {"collection": "dash_shipments"}

    name = StringField()
    packed = IntField(default=0)

    @process(queue=DASHBOARD_QUEUE)
    def pack(self, count: int) -> ProcessStatus:
        self.set_process_step(f"packing {count} parcels")
        Parcel.objects.insert([Parcel(shipment=self.pk, number=i) for i in range(count)])
        for parcel in self.children():
            parcel.weigh()
        self.set_process_step("waiting for the parcels")
        return ProcessStatus.WAITING_FOR_RESULT

    def children(self):  # type: ignore[no-untyped-def]
        return Parcel.objects(shipment=self.pk)

    def join(self) -> None:
        done = self.children().with_status(ProcessStatus.SUCCESS).count()
        Shipment.objects(pk=self.pk).update_one(set__packed=done)


class Parcel(Proc):
    """A child: ``STEPS`` steps of progress, each after its gate opens; parcel 2 is torn."""

    meta = {"collection": "dash_parcels", "indexes": ["shipment"]}

    shipment = ObjectIdField(required=True)
    number = IntField()

    @process(is_child=True, queue=DASHBOARD_QUEUE)
    def weigh(self) -> None:
        client = redis_client()
        for step in range(1, STEPS + 1):
            self.set_process_step(f"weighing, step {step} of {STEPS}")
            self.set_progress(step, STEPS)
            if step == STEPS:
                break
            if client.blpop([gate_key(self.pk)], timeout=90) is None:
                raise TimeoutError("gate never opened")
        if self.number == 2:
            raise ValueError("parcel 2 is torn: its label is unreadable")

    def parent(self) -> Shipment:
        return Shipment.objects.get(pk=self.shipment)
