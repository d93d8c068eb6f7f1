"""procstatus: one persistent, queryable process status for mongoengine documents."""

from procstatus.status import ProcessStatus

__all__ = ["ProcessStatus"]
