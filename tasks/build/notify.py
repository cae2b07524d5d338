"""Webhook notification: POST the build summary to a Slack- or Discord-compatible URL.

The URL comes from MODELMAKE_WEBHOOK (set it empty to disable) or `[build] webhook` in
models.toml. One JSON body serves both services: Slack incoming webhooks read `text`, Discord
reads `content` (at most 2000 characters); `modelmake` carries the same facts structured, for
anything else listening. A notification is a courtesy, never part of the build: any failure
(unreachable, timeout, HTTP error) is one warning line and the build's exit code is unchanged.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable
from urllib.parse import urlsplit

ENV = "MODELMAKE_WEBHOOK"
TIMEOUT = 5.0  # seconds; a hung webhook must not hold the build up for long
DISCORD_LIMIT = 2000


def webhook_url() -> str | None:
    """MODELMAKE_WEBHOOK if set (empty: off), else models.toml's [build] webhook."""
    env = os.environ.get(ENV)
    if env is not None:
        return env.strip() or None
    from tasks.core.config.load import load_config
    from tasks.core.errors import UserError

    try:
        return load_config(check_paths=False).webhook
    except UserError:
        return None


def payload(ok: bool, project: str, table: list[str], failed: list[str], built: int, total: int) -> dict:
    """The JSON body: a title line and the summary table in a code block."""
    title = f"modelmake {project}: build {'succeeded' if ok else 'FAILED'}"
    if failed:
        title += f" ({len(failed)} failed: {', '.join(sorted(failed))})"
    else:
        title += f" ({built} built, {total - built} up to date)"
    body = "\n".join(table)
    text = f"{title}\n```\n{body}\n```" if body else title
    short = text
    if len(short) > DISCORD_LIMIT:
        short = text[: DISCORD_LIMIT - 8].rstrip() + "\n...\n```"
    return {
        "text": text,
        "content": short,
        "username": "modelmake",
        "modelmake": {"status": "success" if ok else "failure", "project": project, "failed": sorted(failed),
                      "built": built, "up_to_date": total - built, "summary": table},
    }


def redact(url: str) -> str:
    """Webhook URLs carry their secret in the path: show only where it goes."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/..."


def send(url: str, body: dict, warn: Callable[[str], None]) -> bool:
    """POST `body`; True on a 2xx answer. Never raises."""
    try:
        request = urllib.request.Request(
            url, data=json.dumps(body).encode("utf-8"), method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "modelmake"},
        )
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            response.read()
        return True
    except Exception as exc:  # noqa: BLE001 - a notification must never fail the build
        reason = getattr(exc, "reason", None) or exc
        warn(f"modelmake: warning: webhook {redact(url)} failed ({reason}); the build result is unaffected\n")
        return False


def notify_run(ok: bool, project: str, table: list[str], failed: list[str], built: int, total: int,
               warn: Callable[[str], None]) -> bool:
    """Send the run's summary if a webhook is configured; False when none is or it failed."""
    try:
        url = webhook_url()
        if not url:
            return False
        return send(url, payload(ok, project, table, failed, built, total), warn)
    except Exception as exc:  # noqa: BLE001
        warn(f"modelmake: warning: webhook not sent ({exc}); the build result is unaffected\n")
        return False
