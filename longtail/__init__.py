"""Longtail: the command line and the pieces chatcore and the gateway share."""
