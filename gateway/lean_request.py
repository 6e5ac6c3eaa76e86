"""The gateway's lean requests: longtail.lean's, made with the gateway's Services and
logging uncaught exceptions where its handlers do."""

from __future__ import annotations

import logging
from typing import ClassVar

from gateway.base import Services
from longtail import lean


class LeanRequest(lean.LeanRequest[Services]):
    __slots__ = ()
    error_log: ClassVar[logging.Logger] = logging.getLogger("longtail.gateway")
