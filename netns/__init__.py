"""Sandbox network namespaces for self-hosted hosts (see netns/sandbox.py, netns/attach.py)."""

from .attach import Target, boot_args, target

from .sandbox import (
    DEFAULT_POOL,
    DEFAULT_STATE_DIR,
    Sandbox,
    down,
    exec_argv,
    get,
    list_sandboxes,
    render_rules,
    set_session,
    sweep_orphans,
    up,
)

__all__ = ["Target", "target", "boot_args", "Sandbox", "up", "down", "get", "list_sandboxes", "set_session", "exec_argv",
           "render_rules", "sweep_orphans", "DEFAULT_POOL", "DEFAULT_STATE_DIR"]
