"""A mail outbox, written as an rpcworker handler plugin.

What it shows:

* public methods are RPC methods, called as ``method(ctxt, **args)``; the return
  value (JSON) is the reply of a call and is dropped for a cast;
* ``target`` (namespace ``mailer``, version ``2.1``): callers must ask for namespace
  ``mailer`` and a version 2.0 or 2.1; anything else is refused with
  ``UnsupportedVersion`` before the handler runs;
* ``handle_message`` receives events (messages without a ``method``);
* ``rpcworker.Reject`` refuses a message for good (dead-lettered at once);
  ``rpcworker.Requeue`` asks for a retry later (bounded by ``max_retries``); any other
  exception is a failure (a caller gets it as a remote error);
* its own options, registered on the ``conf`` rpcworker passes, listed by ``list_opts``.

Nothing is really mailed: delivered mails are kept in memory, so the example runs
anywhere. A real plugin would talk to an SMTP relay in ``_deliver``.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

from oslo_config import cfg

import rpcworker

GROUP = "mailer"

opts = [
    cfg.StrOpt("sender", default="noreply@example.org", help="From address of every mail."),
    cfg.IntOpt(
        "max_recipients",
        default=10,
        min=1,
        help="Most recipients of one mail. More is a ValueError: a caller gets it, "
        "a cast is retried and then dead-lettered.",
    ),
    cfg.ListOpt(
        "blocked_domains",
        default=[],
        help="Recipient domains that are never mailed. A mail to one of them is "
        "rejected at once (rpcworker.Reject: dead-lettered, never retried).",
    ),
]


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """For oslo-config-generator (entry point group ``oslo.config.opts``)."""
    return [(GROUP, opts)]


class Target:
    """Duck-typed ``oslo_messaging.Target``: an oslo Target works as well."""

    namespace = "mailer"
    version = "2.1"  # 2.1 added: `to` may be a list; `sent_to`


class MailerHandler:
    """Send mails: send/status/sent_to/pause/resume calls, send casts, user and bounce events."""

    target = Target()

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        conf.register_opts(opts, group=GROUP)
        group = conf[GROUP]
        self.sender: str = group.sender
        self.max_recipients: int = group.max_recipients
        self.blocked = {d.lower() for d in group.blocked_domains}
        self.mails: dict[str, dict[str, Any]] = {}
        self.paused = False
        self._ids = itertools.count(1)
        # handlers run in a thread pool, several messages at once: protect shared state
        self._lock = threading.Lock()

    # -- RPC methods (public: callable by anyone who can publish to the topic) --------

    def send(self, ctxt: dict[str, Any], to: str | list[str], subject: str, body: str = "") -> str:
        """Deliver a mail; return its id."""
        recipients = self._recipients(to)
        blocked = sorted(r for r in recipients if r.rsplit("@", 1)[1].lower() in self.blocked)
        if blocked:
            # never worth another try: dead-letter a cast now; a caller gets the error
            raise rpcworker.Reject(f"blocked recipient domain: {', '.join(blocked)}")
        with self._lock:
            if self.paused:
                # worth another try later: a cast is retried after the binding's delay
                raise rpcworker.Requeue("delivery is paused")
            mail_id = f"mail-{next(self._ids)}"
            self.mails[mail_id] = {
                "id": mail_id,
                "from": self.sender,
                "to": recipients,
                "subject": subject,
                "body": body,
                "state": "sent",
                "user": ctxt.get("user_id"),
            }
        return mail_id

    def status(self, ctxt: dict[str, Any], mail_id: str) -> dict[str, Any]:
        """The mail ``mail_id`` (KeyError when there is none)."""
        with self._lock:
            return dict(self.mails[mail_id])

    def sent_to(self, ctxt: dict[str, Any], address: str) -> list[str]:
        """Ids of the mails sent to ``address``."""
        with self._lock:
            return [m["id"] for m in self.mails.values() if address in m["to"]]

    def pause(self, ctxt: dict[str, Any]) -> bool:
        """Stop delivering (maintenance): sends are retried until ``resume``."""
        with self._lock:
            self.paused = True
        return True

    def resume(self, ctxt: dict[str, Any]) -> bool:
        with self._lock:
            self.paused = False
        return True

    # -- events --------------------------------------------------------------------

    def handle_message(self, message: rpcworker.Message) -> None:
        """``user.deleted`` forgets the mails sent to ``email``; ``mail.bounced`` marks
        ``mail_id`` bounced. Other event types are ignored (acked)."""
        body = message.body
        if not isinstance(body, dict) or not isinstance(body.get("event_type"), str):
            raise rpcworker.Reject(f"not a mailer event: {body!r}")
        payload = body.get("payload", body)  # oslo notifications carry a payload
        if body["event_type"] == "user.deleted":
            address = payload.get("email")
            if not isinstance(address, str):
                raise rpcworker.Reject("user.deleted without an email")
            with self._lock:
                for mail_id in [k for k, m in self.mails.items() if address in m["to"]]:
                    del self.mails[mail_id]
        elif body["event_type"] == "mail.bounced":
            with self._lock:
                mail = self.mails.get(str(payload.get("mail_id")))
                if mail is None:
                    # the bounce can overtake the send it is about: try again later
                    raise rpcworker.Requeue(f"unknown mail {payload.get('mail_id')!r} (yet)")
                mail["state"] = "bounced"

    # -- private: never callable remotely ----------------------------------------------

    def _recipients(self, to: Any) -> list[str]:
        recipients = [to] if isinstance(to, str) else to
        if (
            not isinstance(recipients, list)
            or not recipients
            or not all(isinstance(r, str) and "@" in r for r in recipients)
        ):
            raise ValueError(f"to: an address or a list of addresses, not {to!r}")
        if len(recipients) > self.max_recipients:
            raise ValueError(
                f"{len(recipients)} recipients: over max_recipients {self.max_recipients}"
            )
        return recipients
