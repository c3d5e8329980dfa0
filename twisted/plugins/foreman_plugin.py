"""twistd plugin: ``twistd -n --pidfile= foreman [options]``.

twistd imports every plugin module each time it starts, so this module only
names things; the application is imported when foreman is actually chosen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

if TYPE_CHECKING:
    from twisted.application.service import IService


@implementer(IServiceMaker, IPlugin)
class _ForemanServiceMaker:
    tapname = "foreman"
    description = "A dependable, shareable front for one Ollama server."

    @property
    def options(self) -> type[usage.Options]:
        from foreman.options import ForemanOptions

        return ForemanOptions

    def makeService(self, options: usage.Options) -> IService:
        from foreman.service import make_service

        return make_service(options.config)  # type: ignore[attr-defined]


foreman = _ForemanServiceMaker()
