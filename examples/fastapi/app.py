"""kanal inside a FastAPI app: one process serves the pages, the auth endpoints and pusher-js.

kanal is mounted at /realtime and started by the app's lifespan; a tiny login puts the user
name in a signed cookie; /pusher/auth and /pusher/user-auth sign for pusher-js with
``kanal_app.realtime``; POST /orders/{id}/ship publishes in-process, without HTTP; a hook
reacts to a member leaving the lobby, in this process, without a webhook endpoint.
Run it with ``examples/fastapi/run`` (README.md beside this file).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import FileResponse, RedirectResponse
from pydantic import BaseModel, Field

from kanal.asgi import create_app
from kanal.webhooks import HookEvent

HERE = Path(__file__).resolve().parent
PUSHER_JS = HERE.parents[1] / "node_modules" / "pusher-js" / "dist" / "web" / "pusher.min.js"
PUSHER_JS_CDN = "https://js.pusher.com/8.4.0/pusher.min.js"

# kanal's development credentials, those `kanal serve` uses without configuration (index.html
# has the key too). Anything else: create_app("kanal.toml"), or create_app() with KANAL_*.
kanal_app = create_app(id="1", key="app-key", secret="app-secret")  # noqa: S106
realtime = kanal_app.realtime

app = FastAPI(lifespan=kanal_app.lifespan)  # starts kanal with the app, stops it with the app
app.mount("/realtime", kanal_app)  # pusher-js: wsPath: "/realtime"


# --- a tiny login: the user name in a signed cookie (your app has real sessions) ----------------

SESSION_KEY = secrets.token_bytes(32)  # new on every start: everyone logs in again
COOKIE = "session"


def _mac(name: str) -> str:
    return hmac.new(SESSION_KEY, name.encode(), hashlib.sha256).hexdigest()


def current_user(request: Request) -> str:
    name, _, mac = request.cookies.get(COOKIE, "").rpartition(".")
    if not name or not hmac.compare_digest(mac, _mac(name)):
        raise HTTPException(401, "log in first")
    return name


class Login(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")


@app.post("/login")
async def login(body: Login, response: Response) -> dict[str, str]:
    response.set_cookie(COOKIE, f"{body.name}.{_mac(body.name)}", httponly=True, samesite="lax")
    return {"name": body.name}


@app.get("/me")
async def me(request: Request) -> dict[str, str]:
    return {"name": current_user(request)}


@app.post("/logout")
async def logout(request: Request, response: Response) -> dict[str, str]:
    user = current_user(request)
    response.delete_cookie(COOKIE)
    await realtime.terminate_user_connections(user)  # every tab of this user, now
    return {}


# --- what pusher-js asks the app (docs/embedding.md, "Authorization") --------------------------


async def pusher_form(request: Request) -> dict[str, str]:
    """pusher-js posts a urlencoded form (FastAPI's ``Form`` would need python-multipart)."""
    fields = parse_qs((await request.body()).decode())
    return {name: values[0] for name, values in fields.items()}


@app.post("/pusher/auth")
async def pusher_auth(request: Request) -> dict[str, Any]:
    """private- and presence- channels: decide whether ``user`` may join, then sign."""
    user, form = current_user(request), await pusher_form(request)
    channel, socket_id = form["channel_name"], form["socket_id"]
    if channel == "presence-lobby":
        return realtime.authorize_channel(socket_id, channel, user, {"name": user})
    if channel == "private-orders":
        return realtime.authorize_channel(socket_id, channel)
    raise HTTPException(403, f"{user} may not join {channel}")


@app.post("/pusher/user-auth")
async def pusher_user_auth(request: Request) -> dict[str, Any]:
    """``pusher.signin()``: then logout can close this user's connections."""
    user, form = current_user(request), await pusher_form(request)
    return realtime.authenticate_user(form["socket_id"], {"id": user, "user_info": {"name": user}})


# --- reacting to presence in Python (docs/embedding.md, "In-process hooks") -------------------


@kanal_app.hooks.on("member_removed")
async def on_member_removed(event: HookEvent) -> None:
    """A member really left the lobby: this runs after the webhook grace period, so a page
    reload does not count, and once per cluster. Tell whoever is still there."""
    if event.channel == "presence-lobby":
        left = {"name": event.user_id, "at_ms": event.time_ms}
        await realtime.trigger("presence-lobby", "member-left", left)


# --- the app's own views --------------------------------------------------------------------


@app.post("/orders/{order_id}/ship")
async def ship(order_id: int, request: Request) -> dict[str, Any]:
    user = current_user(request)
    await realtime.trigger("private-orders", "order-shipped", {"id": order_id, "by": user})
    return {"shipped": order_id}


@app.get("/")
async def page() -> FileResponse:
    return FileResponse(HERE / "index.html")


@app.get("/pusher.min.js", response_model=None)
async def pusher_js() -> FileResponse | RedirectResponse:
    """pusher-js from this repository's node_modules (`npm ci`), else from Pusher's CDN."""
    if PUSHER_JS.is_file():
        return FileResponse(PUSHER_JS, media_type="text/javascript")
    return RedirectResponse(PUSHER_JS_CDN)
