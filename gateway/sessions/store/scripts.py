"""The stores' Lua scripts, kept in gateway/sessions/store/lua/ (one file each, read once when a store module loads)."""

from __future__ import annotations

from importlib.resources import files


def lua(name: str, *, emits: bool = False) -> str:
    """The script `lua/<name>.lua`; with `emits`, after emit.lua, the functions that append lifecycle events."""
    text = (files("gateway.sessions.store") / "lua" / f"{name}.lua").read_text(encoding="utf-8")
    return lua("emit") + text if emits else text
