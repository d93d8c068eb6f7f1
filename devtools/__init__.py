"""Development and test support for procstatus: local services. Not part of the library."""
