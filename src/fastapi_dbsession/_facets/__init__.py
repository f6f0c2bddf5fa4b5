"""Groups of ``DatabaseSessionManager`` methods, one module per concern.

``manager.py`` keeps the constructor and the unit-of-work entry points; each facet here is a
base class of the manager holding one concern's public methods (the context look-ups and hooks
in :mod:`.context`, and so on). A facet only delegates, to the layers below, through the
manager's ``Database`` (``self._database``). New concerns get their own facet module, so the
manager class stays small and two features never edit the same class body.
"""
