"""An ACP agent written with the official Python SDK (``agent-client-protocol``, import
``acp``) for the optional SDK tests: ``python tests/_sdk_agent.py``.

Advertises auth method ``sdk-key`` and requires ``authenticate`` (credential in env
``SDK_KEY``); prompts: ``terminal CMD`` runs CMD through the client's ``terminal/*``
(create, wait_for_exit, output, release), ``fail TEXT`` answers -32603 with
``data.details``; anything else is echoed.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

from acp import (
    InitializeResponse,
    NewSessionResponse,
    PromptResponse,
    RequestError,
    run_agent,
    update_agent_message_text,
)
from acp.schema import AuthMethodAgent


class SdkAgent:
    def __init__(self) -> None:
        self.conn: Any = None
        self.authenticated = False

    def on_connect(self, conn: Any) -> None:
        self.conn = conn

    async def initialize(self, protocol_version: int, **kwargs: Any) -> InitializeResponse:
        method = AuthMethodAgent(id="sdk-key", name="SDK key")
        return InitializeResponse(protocol_version=1, auth_methods=[method])

    async def authenticate(self, method_id: str, **kwargs: Any) -> None:
        if method_id != "sdk-key" or not os.environ.get("SDK_KEY"):
            raise RequestError.auth_required({"methodId": method_id})
        self.authenticated = True

    async def new_session(self, cwd: str, **kwargs: Any) -> NewSessionResponse:
        if not self.authenticated:
            raise RequestError.auth_required()
        return NewSessionResponse(session_id=uuid.uuid4().hex)

    async def prompt(self, session_id: str, prompt: list[Any], **kwargs: Any) -> PromptResponse:
        text = "".join(getattr(block, "text", "") or "" for block in prompt)
        if text.startswith("fail "):
            raise RequestError.internal_error({"details": text[5:]})
        if text.startswith("terminal "):
            created = await self.conn.create_terminal(
                session_id=session_id, command="/bin/sh", args=["-c", text[9:]])
            tid = created.terminal_id
            status = await self.conn.wait_for_terminal_exit(session_id=session_id,
                                                            terminal_id=tid)
            out = await self.conn.terminal_output(session_id=session_id, terminal_id=tid)
            await self.conn.release_terminal(session_id=session_id, terminal_id=tid)
            text = f"exit={status.exit_code} output={out.output}"
        await self.conn.session_update(session_id, update_agent_message_text(text))
        return PromptResponse(stop_reason="end_turn")

    async def cancel(self, session_id: str, **kwargs: Any) -> None:
        return None


if __name__ == "__main__":
    asyncio.run(run_agent(SdkAgent()))  # type: ignore[arg-type]
