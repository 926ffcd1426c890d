"""velo_am: the active-messaging runtime on ZeroMQ (work in progress)."""

__all__: list[str] = []
