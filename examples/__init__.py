"""Example applications built on procstatus."""
