"""An upload with entries: the quickstart domain model (``celery -A examples.upload_app worker``).

An ``Upload`` is a file a user sent; processing it extracts ``Entry`` documents and
processes each entry on the workers. The upload waits (WAITING_FOR_RESULT) until every
entry is done, then ``join()`` sums up the results.
"""

from __future__ import annotations

import os
import time

from celery import Celery
from mongoengine import IntField, ListField, ReferenceField, StringField

import procstatus
from procstatus import Proc, ProcessFailure, ProcessStatus, process

MONGODB_URI = os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017")
MONGODB_DB = os.environ.get("MONGODB_DB", "procstatus_demo")

app = Celery("upload_app", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"))
procstatus.install(app, mongodb_uri=MONGODB_URI, mongodb_db=MONGODB_DB)

STEP_SECONDS = float(os.environ.get("DEMO_STEP_SECONDS", "0.4"))


class Upload(Proc):
    meta = {"collection": "uploads"}

    path = StringField(required=True)
    lines = ListField(StringField())
    entries_ok = IntField(default=0)
    entries_failed = IntField(default=0)

    @process
    def process_upload(self) -> ProcessStatus:
        self.set_process_step("checking the file")
        time.sleep(STEP_SECONDS)  # stands in for real work
        if not self.lines:
            raise ProcessFailure(f"{self.path} is empty: nothing to process")
        self.set_process_step(f"extracting {len(self.lines)} entries")
        time.sleep(STEP_SECONDS)
        Entry.objects.insert(
            [Entry(upload=self, number=i, text=line) for i, line in enumerate(self.lines)]
        )
        for entry in self.children():
            entry.process_entry()
        self.set_process_step("waiting for entries")
        return ProcessStatus.WAITING_FOR_RESULT

    def children(self):  # type: ignore[no-untyped-def]
        return Entry.objects(upload=self)

    def join(self) -> None:
        ok = self.children().with_status(ProcessStatus.SUCCESS).count()
        failed = self.children().failed().count()
        Upload.objects(pk=self.pk).update_one(set__entries_ok=ok, set__entries_failed=failed)
        if failed:
            self.warning(f"{failed} of {ok + failed} entries failed")


class Entry(Proc):
    # (upload, process_status): each entry's end asks whether a sibling is still processing.
    meta = {"collection": "entries", "indexes": [("upload", "process_status")]}

    upload = ReferenceField(Upload, required=True)
    number = IntField(required=True)
    text = StringField()

    @process(is_child=True)
    def process_entry(self) -> None:
        self.set_process_step("parsing")
        time.sleep(STEP_SECONDS / 2)
        if not self.text or not self.text.strip():
            raise ValueError(f"entry {self.number} is blank")

    def parent(self) -> Upload:
        return self.upload
