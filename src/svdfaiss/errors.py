"""Domain exceptions raised by the core library; front ends map them to exit codes or HTTP."""


class SvdfaissError(Exception):
    """Base class of every error svdfaiss raises on purpose."""


class InvalidInput(SvdfaissError, ValueError):
    """Input data or parameters cannot be used; the message names the file, line, field or id."""


class UnsupportedFilter(InvalidInput):
    """A business filter on a catalog column the bundle does not have (a 400, not a 422)."""


class InvalidBundle(SvdfaissError):
    """A bundle on disk is missing a file, fails its checksum or cannot be parsed."""


class NoBundle(SvdfaissError):
    """No published bundle exists for the requested model."""


class UnknownItem(SvdfaissError, KeyError):
    """An item id that the loaded model does not know."""

    def __init__(self, item_id: str) -> None:
        super().__init__(item_id)
        self.item_id = item_id

    def __str__(self) -> str:
        return f"unknown item id {self.item_id!r}"


class NotInMode(UnknownItem):
    """An item the requested mode cannot place (a 404): a catalog-only item has no CF
    vector, an item without catalog text or category no content vector."""

    def __init__(self, item_id: str, mode: str) -> None:
        super().__init__(item_id)
        self.mode = mode

    def __str__(self) -> str:
        if self.mode == "cf":
            return (f"item {self.item_id!r} is in the catalog but has no interactions: use "
                    "mode=content or mode=hybrid")
        return (f"item {self.item_id!r} has no content (no catalog text or category, or a "
                "model built without content vectors): use mode=cf")


class NoEvidence(NotInMode):
    """An item the log relates to no other item (a 404 in mode cf): nobody who interacted
    with it interacted with anything else, so the model has no collaborative evidence."""

    def __init__(self, item_id: str) -> None:
        super().__init__(item_id, "cf")

    def __str__(self) -> str:
        return (f"item {self.item_id!r} has no collaborative evidence: nobody who interacted "
                "with it interacted with another item; mode=hybrid answers with content or "
                "popular items (see reason)")


class UnknownItems(InvalidInput):
    """None of several item ids is known (a basket with nothing to fold in)."""

    def __init__(self, item_ids: list[str]) -> None:
        shown = ", ".join(repr(i) for i in item_ids[:5]) + ("..." if len(item_ids) > 5 else "")
        super().__init__(f"none of the {len(item_ids)} item ids is known: {shown}")
        self.item_ids = item_ids


class UnknownUser(SvdfaissError, KeyError):
    """A user id that the loaded model does not know."""

    def __init__(self, user_id: str) -> None:
        super().__init__(user_id)
        self.user_id = user_id

    def __str__(self) -> str:
        return f"unknown user id {self.user_id!r}"


class NoUserEvidence(UnknownUser):
    """A user whose history holds no item with collaborative evidence (similar users: 404)."""

    def __str__(self) -> str:
        return (f"user {self.user_id!r} has no collaborative evidence: none of their items was "
                "interacted with together with another item")


class PortInUse(SvdfaissError):
    """The address the service should listen on is taken (exit code 8)."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"{host}:{port} is already in use (another svdfaiss, or another "
                         f"server); choose another port with --port N (or SVDFAISS_PORT)")
        self.host, self.port = host, port
