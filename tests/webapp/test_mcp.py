"""The MCP server of the running app (``launch(mcp_server=True)``), called over streamable HTTP
on loopback with the ``mcp`` client library: exactly the five tools are listed; a user
authenticated with HTTP basic credentials uploads a text file, waits for it to be read, asks
and gets an answer with sources, and exports it; a call without credentials is refused, and
another user cannot reach the document. One app (``--auth`` users ann, bob, cy and dee) serves
the module: an upload without credentials writes nothing to disk, MCP asks take turns with
each other and with the UI's, and an exported bundle is downloaded by its exporter only."""

from __future__ import annotations

import ast
import asyncio
import base64
import os
import re
import threading
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from store_helpers import story

from app.mcp_tools import TOOLS, Access, SignInRequired, read_data_url
from storage.errors import StoreError

pytest.importorskip("mcp")

USERS = {"ann": "pw-a", "bob": "pw-b", "cy": "pw-c", "dee": "pw-d"}
UPLOAD_MB = 1  # the app's upload limit here (HOMER_MAX_UPLOAD_MB), so an over-limit file fits an MCP request


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


def data_url(data: bytes, media: str = "text/plain") -> str:
    return f"data:{media};base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def app(tmp_path_factory, model_dir):
    """The app with four --auth users, its own gradio temp folder, INFO logs (the model's
    turns) and an upload limit of UPLOAD_MB; yields url, home and temp (the gradio folder)."""
    from app_helpers import running_app

    root = tmp_path_factory.mktemp("mcp-app")
    home, temp = root / "home", root / "gradio"
    temp.mkdir()
    users = [arg for name, password in USERS.items() for arg in ("--auth", f"{name}:{password}")]
    with running_app(
        home,
        model_dir,
        *users,
        "-v",
        env={"HOMER_FOCUS": "passages", "GRADIO_TEMP_DIR": str(temp), "HOMER_MAX_UPLOAD_MB": str(UPLOAD_MB)},
    ) as url:
        yield SimpleNamespace(url=url, home=home, temp=temp)


def wait_ready(app, headers: dict, document: str) -> dict:
    from app_helpers import app_log

    deadline = time.monotonic() + 240
    while True:
        _, (status,) = asyncio.run(mcp_calls(app.url, [("build_status", {"document": document[:12]})], headers))
        if status["ready"] or status["state"].startswith("failed") or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert status["ready"], (status, app_log(app.home)[-3000:])
    return status


@pytest.fixture(scope="module")
def cy_document(app) -> str:
    """A ready document of cy's (uploaded over MCP)."""
    text = story(12, "cy") + "The quillon was hung above the kitchen door.\n\n" + story(6, "more")
    _, (added,) = asyncio.run(
        mcp_calls(
            app.url, [("upload", {"file": data_url(text.encode()), "name": "quillon.txt"})], basic("cy", USERS["cy"])
        )
    )
    wait_ready(app, basic("cy", USERS["cy"]), added["id"])
    return added["id"]


@pytest.mark.e2e
def test_mcp_tools_list_upload_wait_ask_export(app, tmp_path):
    text = story(16, "mcp") + "The zyzzogeton was kept in the boathouse by the harbour.\n\n" + story(8, "end")
    url = app.url
    ann = basic("ann", "pw-a")
    names, (added,) = asyncio.run(
        mcp_calls(url, [("upload", {"file": data_url(text.encode()), "name": "boathouse.txt"})], ann)
    )
    assert sorted(names) == sorted(TOOLS), names
    assert added["name"] == "boathouse.txt" and added["status"].endswith("queued for reading"), added
    document = added["id"]
    wait_ready(app, ann, document)

    _, (listed, answer, bundle) = asyncio.run(
        mcp_calls(
            url,
            [
                ("list_documents", {}),
                (
                    "ask",
                    {"document": "boathouse.txt", "question": "Where was the zyzzogeton kept?", "max_new_tokens": 4},
                ),
                ("export_bundle", {"document": document}),
            ],
            ann,
        )
    )
    assert [(d["id"], d["ready"], d["access"]) for d in listed] == [(document, True, "owner")]
    assert isinstance(answer["answer"], str) and answer["answer"], answer
    assert answer["sources"] and all(s["document"] == "boathouse.txt" for s in answer["sources"]), answer
    assert any("zyzzogeton" in s["quote"] for s in answer["sources"]), answer["sources"]
    assert isinstance(bundle, str) and bundle.endswith(".homer-bundle.zip") and "/homer/exports/" in bundle

    # without credentials nothing is served; bob cannot reach ann's document
    _, refused = asyncio.run(mcp_calls(url, [("list_documents", {}), ("build_status", {"document": document})]))
    assert all(r[0] == "error" and "log in" in r[1] for r in refused), refused
    _, (theirs, asked) = asyncio.run(
        mcp_calls(
            url,
            [("list_documents", {}), ("ask", {"document": document[:12], "question": "Where?"})],
            basic("bob", "pw-b"),
        )
    )
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
        Client(url, auth=("bob", "pw-b"), verbose=False).predict(added["id"], "Where?", 4, api_name="/ask_document")


def files_in(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


@pytest.mark.e2e
def test_mcp_upload_without_credentials_writes_nothing_and_is_bounded(app):
    """20 unauthenticated (or wrongly authenticated) uploads of distinct 0.75 MB data: URLs
    leave gradio's temp folder as it was (they left 20 files, 50 MiB, before the tool took
    its file as a string); an upload over the limit, an http(s) URL and a file reference
    smuggled as a FileData dict are refused in one line and store nothing."""
    before = files_in(app.temp)
    uploads = [("upload", {"file": data_url(os.urandom(3 * 2**18)), "name": f"x{i}.txt"}) for i in range(20)]
    _, anonymous = asyncio.run(mcp_calls(app.url, uploads[:10]))
    _, wrong = asyncio.run(mcp_calls(app.url, uploads[10:], basic("dee", "not-dee's")))
    assert all(r[0] == "error" and "log in" in r[1] for r in anonymous + wrong), (anonymous + wrong)[:2]
    assert files_in(app.temp) == before

    dee = basic("dee", USERS["dee"])
    over = os.urandom(UPLOAD_MB * 2**20 + 2**16)
    _, (big, fetched, smuggled, listed) = asyncio.run(
        mcp_calls(
            app.url,
            [
                ("upload", {"file": data_url(over), "name": "big.txt"}),
                ("upload", {"file": app.url + "gradio_api/info", "name": "info.txt"}),
                (
                    "upload",
                    {
                        "file": {"path": app.url + "gradio_api/info", "meta": {"_type": "gradio.FileData"}},
                        "name": "info.txt",
                    },
                ),
                ("list_documents", {}),
            ],
            dee,
        )
    )
    assert big[0] == "error" and f"over the upload limit of {UPLOAD_MB:.1f} MB" in big[1], big
    assert fetched[0] == "error" and "does not fetch URLs" in fetched[1], fetched
    assert smuggled[0] == "error" and "is not of type 'string'" in smuggled[1], smuggled
    assert all("\n" not in r[1] for r in (big, fetched, smuggled))
    assert listed == [] and files_in(app.temp) == before


def test_data_urls_decode_a_slice_at_a_time_and_stop_at_the_limit(monkeypatch):
    import urllib.parse

    import app.mcp_tools as tools

    data = os.urandom(1000)
    text = base64.b64encode(data).decode()
    monkeypatch.setattr(tools, "DECODE_CHARS", 7)  # slices that cut base64 quads and %XX escapes
    assert read_data_url("data:;base64," + "\n".join(re.findall(".{1,19}", text)), 1000)[0] == data
    assert read_data_url("data:;base64," + urllib.parse.quote(text, safe=""), 1000)[0] == data
    assert read_data_url("data:application/octet-stream," + urllib.parse.quote(data, safe=""), 1000)[0] == data
    assert read_data_url("data:application/pdf;name=a.pdf;base64,JVBERi0=", 10) == (
        b"%PDF-",
        "application/pdf",
        "a.pdf",
    )
    with pytest.raises(StoreError, match="over the upload limit"):
        read_data_url("data:;base64," + text, 999)
    for refused, reason in (
        ("https://example.org/a.pdf", "does not fetch URLs"),
        ("/etc/passwd", "data: URL"),
        ("data:;base64,abc", "not valid"),
        ("data:text/plain;base64", "no comma"),
    ):
        with pytest.raises(StoreError, match=reason):
            read_data_url(refused, 1000)


TURN = re.compile(
    r"model turn (?P<door>[\w ]+): began (?P<began>[\d.]+) ended (?P<ended>[\d.]+) "
    r"\(waited (?P<waited>[\d.]+) s\)"
)


@pytest.mark.e2e
def test_mcp_asks_take_turns_with_each_other_and_the_ui(app, cy_document):
    """Four concurrent MCP asks and a UI /ask (gradio_client): the app's log shows five model
    turns that never overlap, and the later ones waited (they ran in parallel before: 3.5 s
    each against 0.6 s alone)."""
    from app_helpers import app_log
    from gradio_client import Client

    logged = len(app_log(app.home))
    question = {"document": cy_document, "question": "What hung above the kitchen door?", "max_new_tokens": 48}
    ui = Client(app.url, auth=("cy", USERS["cy"]), verbose=False)
    replies = {}

    def ui_ask():
        replies["ui"] = ui.predict(cy_document, "What hung above the door?", 0.0, 48, api_name="/ask")

    async def together():
        thread = threading.Thread(target=ui_ask)
        thread.start()
        asked = await asyncio.gather(
            *[mcp_calls(app.url, [("ask", question)], basic("cy", USERS["cy"])) for _ in range(4)]
        )
        await asyncio.to_thread(thread.join, 300)
        return [result for _, (result,) in asked]

    answers = asyncio.run(together())
    assert all(isinstance(a, dict) and a["answer"] for a in answers), answers
    assert replies.get("ui") and replies["ui"][0][-1]["role"] == "assistant", replies
    turns = sorted(
        (float(m["began"]), float(m["ended"]), m["door"], float(m["waited"]))
        for m in TURN.finditer(app_log(app.home)[logged:])
    )
    assert sorted(t[2] for t in turns) == ["mcp ask"] * 4 + ["ui ask"], turns
    assert all(later[0] >= earlier[1] for earlier, later in zip(turns, turns[1:])), turns  # one at a time
    assert sum(t[3] > 0.05 for t in turns) >= 3, turns  # they were in flight together, and waited their turn


def test_mcp_export_link_downloads_for_its_exporter_only(app, cy_document):
    """The export_bundle link serves the bundle to cy (basic credentials, or her login cookie)
    and to nobody else: dee gets the same 404 as an unknown link, no credentials or a wrong
    password 401. Before, cy herself got 401 (gradio's /file= route knows only its login cookie),
    and with a login cookie any user could fetch the link."""
    import httpx

    cy, dee = basic("cy", USERS["cy"]), basic("dee", USERS["dee"])
    _, (link,) = asyncio.run(mcp_calls(app.url, [("export_bundle", {"document": cy_document})], cy))
    assert link.startswith(app.url + "homer/exports/") and link.endswith("quillon.homer-bundle.zip"), link

    mine = httpx.get(link, headers=cy)
    assert mine.status_code == 200, (mine.status_code, mine.text[:200])
    bundle = Path(app.home.parent / "downloaded.zip")
    bundle.write_bytes(mine.content)
    assert zipfile.is_zipfile(bundle) and zipfile.ZipFile(bundle).namelist()
    unknown = link.replace("/homer/exports/", "/homer/exports/x")
    answers = {
        who: httpx.get(address, headers=headers)
        for who, address, headers in (
            ("dee", link, dee),
            ("unknown", unknown, cy),
            ("nobody", link, {}),
            ("wrong", link, basic("cy", "pw-d")),
        )
    }
    assert {who: r.status_code for who, r in answers.items()} == {
        "dee": 404,
        "unknown": 404,
        "nobody": 401,
        "wrong": 401,
    }
    assert answers["dee"].text == answers["unknown"].text and "\n" not in answers["dee"].text
    for user, expected in (("cy", 200), ("dee", 404)):  # the app's login cookie, as a browser has it
        with httpx.Client() as browser:
            assert browser.post(app.url + "login", data={"username": user, "password": USERS[user]}).status_code == 200
            assert browser.get(link).status_code == expected, user
    assert not [name for name in files_in(app.temp) if name.endswith(".homer-bundle.zip")]  # not in gradio's cache


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
