"""An ACP agent written with the official Python SDK (``agent-client-protocol``, import
``acp``) for the SDK tests: ``python tests/_sdk_agent.py``.

Advertises auth method ``sdk-key`` and requires ``authenticate`` (credential in env
``SDK_KEY``) for everything but ``initialize``; advertises ``sessionCapabilities.list``
(``session/list`` one session per page, filtered by ``cwd``; with ``--session-file F`` the
sessions are kept in F across agent processes) and two config options, ``model``
(category ``model``: ``fast`` / ``smart``) and ``verbose`` (boolean).  Prompts:
``terminal CMD`` runs CMD through the client's ``terminal/*`` (create, wait_for_exit, output,
release); ``fail TEXT`` answers -32603 with ``data.details``; ``config`` answers the current
option values; ``elicit`` asks a form (a ``name``) and answers the action and content;
``elicit-url`` asks a URL elicitation, sends ``elicitation/complete`` and answers the action;
anything else is echoed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
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
from acp.schema import (
    AgentCapabilities,
    AuthMethodAgent,
    ElicitationFormSessionMode,
    ElicitationUrlSessionMode,
    ListSessionsResponse,
    SetSessionConfigOptionResponse,
)

MODELS = ("fast", "smart")


class SdkAgent:
    def __init__(self, session_file: str | None) -> None:
        self.conn: Any = None
        self.authenticated = False
        self.session_file = session_file
        #: session id -> (cwd, title, {option id: value})
        self.sessions: dict[str, tuple[str, str, dict[str, Any]]] = {}
        if session_file and os.path.exists(session_file):
            with open(session_file) as f:
                self.sessions = {k: tuple(v) for k, v in json.load(f).items()}  # type: ignore

    def _save(self) -> None:
        if self.session_file:
            with open(self.session_file, "w") as f:
                json.dump(self.sessions, f)

    def on_connect(self, conn: Any) -> None:
        self.conn = conn

    def _require_auth(self) -> None:
        if not self.authenticated:
            raise RequestError.auth_required()

    async def initialize(self, protocol_version: int, **kwargs: Any) -> InitializeResponse:
        method = AuthMethodAgent(id="sdk-key", name="SDK key")
        caps = AgentCapabilities.model_validate({"sessionCapabilities": {"list": {}}})
        return InitializeResponse(protocol_version=1, auth_methods=[method],
                                  agent_capabilities=caps)

    async def authenticate(self, method_id: str, **kwargs: Any) -> None:
        if method_id != "sdk-key" or not os.environ.get("SDK_KEY"):
            raise RequestError.auth_required({"methodId": method_id})
        self.authenticated = True

    def _options(self, session_id: str) -> list[dict[str, Any]]:
        values = self.sessions[session_id][2]
        return [
            {"type": "select", "id": "model", "name": "Model", "category": "model",
             "currentValue": values["model"],
             "options": [{"value": m, "name": m.title()} for m in MODELS]},
            {"type": "boolean", "id": "verbose", "name": "Verbose",
             "currentValue": values["verbose"]},
        ]

    async def new_session(self, cwd: str, **kwargs: Any) -> NewSessionResponse:
        self._require_auth()
        sid = uuid.uuid4().hex
        self.sessions[sid] = (cwd, f"session {len(self.sessions) + 1}",
                              {"model": "fast", "verbose": False})
        self._save()
        return NewSessionResponse.model_validate(
            {"sessionId": sid, "configOptions": self._options(sid)})

    async def list_sessions(self, cwd: str | None = None, cursor: str | None = None,
                            **kwargs: Any) -> ListSessionsResponse:
        self._require_auth()
        ids = [s for s, (c, _, _) in self.sessions.items() if cwd is None or c == cwd]
        start = int(cursor or 0)
        page = [{"sessionId": s, "cwd": self.sessions[s][0], "title": self.sessions[s][1],
                 "updatedAt": "2026-12-05T00:00:00Z"} for s in ids[start:start + 1]]
        more = start + 1 < len(ids)
        return ListSessionsResponse.model_validate(
            {"sessions": page, **({"nextCursor": str(start + 1)} if more else {})})

    async def set_config_option(self, config_id: str, session_id: str, value: str | bool,
                                **kwargs: Any) -> SetSessionConfigOptionResponse:
        self._require_auth()
        values = self.sessions[session_id][2]
        if config_id == "model" and value in MODELS:
            values["model"] = value
        elif config_id == "verbose" and isinstance(value, bool):
            values["verbose"] = value
        else:
            raise RequestError.invalid_params({"configId": config_id})
        self._save()
        return SetSessionConfigOptionResponse.model_validate(
            {"configOptions": self._options(session_id)})

    async def _elicit(self, session_id: str, text: str) -> str:
        if text == "elicit-url":
            eid = uuid.uuid4().hex
            mode: Any = ElicitationUrlSessionMode.model_validate(
                {"sessionId": session_id, "elicitationId": eid,
                 "url": "https://example.com/login"})
            answer = await self.conn.create_elicitation(message="Sign in", mode=mode)
            await self.conn.complete_elicitation(elicitation_id=eid)
            return f"url {answer.action}"
        mode = ElicitationFormSessionMode.model_validate(
            {"sessionId": session_id, "requestedSchema": {
                "type": "object", "required": ["name"],
                "properties": {"name": {"type": "string", "title": "Your name"}}}})
        answer = await self.conn.create_elicitation(message="Who are you?", mode=mode)
        content = getattr(answer, "content", None)
        return f"form {answer.action} {json.dumps(content, sort_keys=True)}"

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
        elif text == "config":
            text = json.dumps(self.sessions[session_id][2], sort_keys=True)
        elif text.startswith("elicit"):
            text = await self._elicit(session_id, text)
        await self.conn.session_update(session_id, update_agent_message_text(text))
        return PromptResponse(stop_reason="end_turn")

    async def cancel(self, session_id: str, **kwargs: Any) -> None:
        return None


if __name__ == "__main__":
    FILE = sys.argv[sys.argv.index("--session-file") + 1] if "--session-file" in sys.argv else None
    asyncio.run(run_agent(SdkAgent(FILE)))  # type: ignore[arg-type]
