"""The MCP server of the running app (``launch(mcp_server=True)``), called over streamable HTTP
on loopback with the ``mcp`` client library: exactly the five tools are listed; a user
authenticated with HTTP basic credentials uploads a text file, waits for it to be read, asks
and gets an answer with sources, and exports it; a call without credentials is refused, and
another user cannot reach the document."""

from __future__ import annotations

import ast
import asyncio
import base64
import time

import pytest

from app.mcp_tools import TOOLS, Access, SignInRequired
from store_helpers import story

pytest.importorskip("mcp")


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def mcp_calls(url: str, calls, headers: dict | None = None) -> tuple[list[str], list]:
    """List the tools, then run ``calls`` (``(tool, arguments)``, or a callable taking the
    session) in one MCP session; returns the tool names and the results (the tool's value,
    or ``("error", text)``)."""
    import httpx
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with httpx.AsyncClient(headers=headers or {}, timeout=httpx.Timeout(120, read=300)) as http:
        async with streamable_http_client(url + "gradio_api/mcp/", http_client=http) as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                names = [tool.name for tool in (await session.list_tools()).tools]
                results = []
                for call in calls:
                    if callable(call):
                        results.append(await call(session))
                        continue
                    results.append(value(await session.call_tool(*call)))
                return names, results


def value(result):
    text = "".join(getattr(part, "text", "") for part in result.content)
    if result.isError:
        return ("error", text)
    try:
        return ast.literal_eval(text)  # gradio's MCP server sends a dict as its Python text
    except (ValueError, SyntaxError):
        return text


def test_mcp_tools_list_upload_wait_ask_export(tmp_path, model_dir):
    from app_helpers import app_log, running_app

    text = story(16, "mcp") + "The zyzzogeton was kept in the boathouse by the harbour.\n\n" + story(8, "end")
    data_url = "data:text/plain;base64," + base64.b64encode(text.encode()).decode()
    home = tmp_path / "home"
    with running_app(home, model_dir, "--auth", "ann:pw-a", "--auth", "bob:pw-b",
                     env={"HOMER_FOCUS": "passages"}) as url:
        ann = basic("ann", "pw-a")
        names, (added,) = asyncio.run(mcp_calls(url, [("upload", {"file": data_url, "name": "boathouse.txt"})], ann))
        assert sorted(names) == sorted(TOOLS), names
        assert added["name"] == "boathouse.txt" and added["status"].endswith("queued for reading"), added
        document = added["id"]

        deadline = time.monotonic() + 240
        while True:
            _, (status,) = asyncio.run(mcp_calls(url, [("build_status", {"document": document[:12]})], ann))
            if status["ready"] or status["state"].startswith("failed") or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        assert status["ready"], (status, app_log(home)[-3000:])

        _, (listed, answer, bundle) = asyncio.run(mcp_calls(url, [
            ("list_documents", {}),
            ("ask", {"document": "boathouse.txt", "question": "Where was the zyzzogeton kept?",
                     "max_new_tokens": 4}),
            ("export_bundle", {"document": document})], ann))
        assert [(d["id"], d["ready"], d["access"]) for d in listed] == [(document, True, "owner")]
        assert isinstance(answer["answer"], str) and answer["answer"], answer
        assert answer["sources"] and all(s["document"] == "boathouse.txt" for s in answer["sources"]), answer
        assert any("zyzzogeton" in s["quote"] for s in answer["sources"]), answer["sources"]
        assert isinstance(bundle, str) and bundle.endswith(".homer-bundle.zip") and "/gradio_api/file=" in bundle

        # without credentials nothing is served; bob cannot reach ann's document
        _, refused = asyncio.run(mcp_calls(url, [("list_documents", {}), ("build_status", {"document": document})]))
        assert all(r[0] == "error" and "log in" in r[1] for r in refused), refused
        _, (theirs, asked) = asyncio.run(mcp_calls(url, [
            ("list_documents", {}), ("ask", {"document": document[:12], "question": "Where?"})], basic("bob", "pw-b")))
        assert theirs == [] and asked[0] == "error" and "in your library" in asked[1], (theirs, asked)
        _, (wrong,) = asyncio.run(mcp_calls(url, [("list_documents", {})], basic("ann", "pw-b")))
        assert wrong[0] == "error" and "log in" in wrong[1]

        # the README's gradio_client script: the same tools as API endpoints
        from gradio_client import Client, handle_file

        book = tmp_path / "lighthouse.txt"
        book.write_text(story(12, "script") + "The zyzzogeton was kept in the lamp room.\n\n")
        client = Client(url, auth=("ann", "pw-a"), verbose=False)
        added = client.predict(handle_file(str(book)), "lighthouse.txt", api_name="/upload_document")
        assert added["status"] == "lighthouse.txt: queued for reading", added
        deadline = time.monotonic() + 240
        while not (status := client.predict(added["id"], api_name="/build_status"))["ready"]:
            assert not status["state"].startswith("failed") and time.monotonic() < deadline, status
            time.sleep(1.0)
        reply = client.predict(added["id"], "Where was the zyzzogeton kept?", 4, api_name="/ask_document")
        assert reply["answer"] and any("zyzzogeton" in s["quote"] for s in reply["sources"]), reply
        with pytest.raises(Exception, match="in your library"):
            Client(url, auth=("bob", "pw-b"), verbose=False).predict(added["id"], "Where?", 4,
                                                                      api_name="/ask_document")


class Headers(dict):
    pass


class FakeRequest:
    def __init__(self, authorization: str | None = None, username: str | None = None):
        self.headers = Headers({"authorization": authorization} if authorization else {})
        self.username = username


def test_access_resolves_login_basic_credentials_oauth_profiles_and_tokens():
    import gradio as gr

    login = Access(login=True, users={"ann": "pw-a"})
    assert login.owner(FakeRequest(username="ann")) == "ann"
    assert login.owner(FakeRequest(basic("ann", "pw-a")["Authorization"])) == "ann"
    for bad in (basic("ann", "nope")["Authorization"], "Basic !!!", "Bearer x", None):
        with pytest.raises(SignInRequired, match="log in"):
            login.owner(FakeRequest(bad))
    profile = gr.OAuthProfile({"name": "Cy", "preferred_username": "cy", "profile": "", "picture": ""})
    assert Access(login=True, oauth=True).owner(FakeRequest(username="ann"), profile) == "ann"  # --auth wins

    seen = []
    oauth = Access(oauth=True, whoami=lambda token: seen.append(token) or {"name": "dee", "type": "user"})
    assert oauth.owner(FakeRequest(), profile) == "cy"
    assert oauth.owner(FakeRequest("Bearer hf_abc")) == "dee"
    assert oauth.owner(FakeRequest("Bearer hf_abc")) == "dee" and seen == ["hf_abc"]  # cached
    with pytest.raises(SignInRequired, match="sign in with Hugging Face"):
        oauth.owner(FakeRequest(), None)
    failing = Access(oauth=True, whoami=lambda token: (_ for _ in ()).throw(RuntimeError("401")))
    assert failing.signed_out(FakeRequest("Bearer hf_bad"))
    assert Access().owner(FakeRequest()) is None and not Access().team
