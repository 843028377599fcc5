#!/usr/bin/env python3
"""The topic WebSocket (docs/reference.md §12) driven the way its users write clients: Python's
websocket-client, a WebSocketApp per connection with on_open/on_message/on_close callbacks.

Run by tests/js/topics.test.mjs, which starts the gateways and passes:
  TOPICS_URL        ws://127.0.0.1:PORT/ws of a gateway with the demo data and CABLE_MAX_TOPICS=5
  TOPICS_URL_2      the same path on a second gateway of the same database
  DOOMED_URL        the same path on a third gateway, which this script shuts down (SIGTERM)
  DOOMED_PID        that gateway's process id
  DATABASE_URL      the database (events are published with psql)
Prints one line per scenario and exits non-zero at the first failure.
"""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import websocket  # websocket-client

WAIT = 10.0
URL = os.environ["TOPICS_URL"]
URL_2 = os.environ["TOPICS_URL_2"]
DATABASE_URL = os.environ["DATABASE_URL"]


def sql(statement):
    subprocess.run(["psql", DATABASE_URL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", statement],
                   check=True, stdout=subprocess.DEVNULL)


def publish(account_id, event, data, inbox_id=None, user_id=None):
    columns = "account_id, event, data, inbox_id, user_id"
    values = "%d, '%s', '%s', %s, %s" % (
        account_id, event, json.dumps(data), "NULL" if inbox_id is None else inbox_id,
        "NULL" if user_id is None else user_id)
    sql("INSERT INTO cable_events (%s) VALUES (%s)" % (columns, values))


class Feed:
    """One WebSocketApp in a thread; what it receives, in order, in a queue."""

    def __init__(self, token, url=URL):
        self.frames = queue.Queue()
        self.opened = threading.Event()
        self.close_code = None
        self.closed = threading.Event()
        self.app = websocket.WebSocketApp(
            "%s?token=%s" % (url, token),
            on_open=lambda ws: self.opened.set(),
            on_message=lambda ws, text: self.frames.put(json.loads(text)),
            on_close=self._on_close)
        self.thread = threading.Thread(target=self.app.run_forever, daemon=True)
        self.thread.start()
        if not self.opened.wait(WAIT):
            raise AssertionError("connection to %s not open in time" % url)

    def _on_close(self, ws, code, reason):
        self.close_code = code
        self.closed.set()

    def send(self, value):
        self.app.send(value if isinstance(value, str) else json.dumps(value))

    def next(self):
        try:
            return self.frames.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError("no frame in time")

    def event(self):
        """The next event, presence snapshots skipped."""
        while True:
            frame = self.next()
            assert "type" not in frame, "expected an event, got %r" % frame
            if frame["event_type"] != "presence.update":
                return frame

    def subscribe(self, topics):
        self.send({"type": "subscribe", "topics": topics})
        return self.next()

    def subscribe_ok(self, topics):
        answer = self.subscribe(topics)
        assert answer == {"type": "subscribed", "topics": topics}, answer

    def error(self):
        frame = self.next()
        assert frame["type"] == "error", frame
        return frame["code"], frame.get("topic")

    def wait_closed(self, within):
        if not self.closed.wait(within):
            raise AssertionError("not closed within %ss" % within)
        return self.close_code

    def close(self):
        self.app.close()


def refused_before_the_upgrade():
    for token in ["", "nope", "demo-contact-dave"]:
        try:
            websocket.create_connection("%s?token=%s" % (URL, token), timeout=WAIT).close()
        except websocket.WebSocketBadStatusException as e:
            assert e.status_code == 401, (token, e.status_code)
        else:
            raise AssertionError("token %r was accepted" % token)


def permissions():
    alice = Feed("demo-user-alice")
    answer = alice.subscribe(["account_id:1:*:*", "account_id:2:*:*", "user_id:2:*:*", "user_id:1:*:*"])
    assert answer == {"type": "subscribed", "topics": ["account_id:1:*:*", "user_id:1:*:*"]}, answer
    assert alice.error() == ("permission_denied", "account_id:2:*:*")
    assert alice.error() == ("permission_denied", "user_id:2:*:*")
    bob = Feed("demo-user-bob")
    answer = bob.subscribe(["account_id:1:*:*", "user_id:2:*:*"])
    assert answer == {"type": "subscribed", "topics": ["user_id:2:*:*"]}, answer
    assert bob.error() == ("permission_denied", "account_id:1:*:*")
    frank = Feed("demo-user-frank")
    frank.subscribe_ok(["account_id:2:*:*"])
    publish(1, "conversation.created", {"id": 501})
    publish(2, "conversation.created", {"id": 502})
    assert alice.event()["topic"] == "user_id:1:conversation:501"
    assert bob.event()["topic"] == "user_id:2:conversation:501"
    assert frank.event()["topic"] == "account_id:2:conversation:502"
    for feed in (alice, bob, frank):
        feed.close()


def wildcards_and_filters():
    by_resource = Feed("demo-user-alice")
    by_resource.subscribe_ok(["account_id:1:message:*"])
    by_id = Feed("demo-user-alice")
    by_id.subscribe_ok(["account_id:1:*:601"])
    exact = Feed("demo-user-alice")
    exact.subscribe_ok(["account_id:1:conversation:602"])
    publish(1, "conversation.updated", {"id": 602})
    publish(1, "message.created", {"id": 601})
    publish(1, "conversation.updated", {"id": 601})
    publish(1, "message.created", {"id": 603})
    got = [by_resource.event()["topic"], by_resource.event()["topic"]]
    assert got == ["account_id:1:message:601", "account_id:1:message:603"], got
    got = [by_id.event()["topic"], by_id.event()["topic"]]
    assert got == ["account_id:1:message:601", "account_id:1:conversation:601"], got
    assert exact.event()["topic"] == "account_id:1:conversation:602"
    for feed in (by_resource, by_id, exact):
        feed.close()


def one_copy_for_overlapping_topics():
    alice = Feed("demo-user-alice")
    alice.subscribe_ok(["account_id:1:*:*", "account_id:1:message:*", "user_id:1:message:701"])
    publish(1, "message.created", {"id": 701, "content": "once"}, inbox_id=1)
    publish(1, "message.created", {"id": 702}, inbox_id=1)
    first = alice.event()
    assert first["topic"] == "user_id:1:message:701", first
    assert first["event_type"] == "message.created"
    assert first["data"] == {"id": 701, "content": "once", "account_id": 1}, first
    assert first["timestamp"].endswith("Z") and len(first["timestamp"]) == 27, first
    assert alice.event()["data"]["id"] == 702
    alice.close()


def order_under_fifty_events():
    alice = Feed("demo-user-alice")
    alice.subscribe_ok(["account_id:1:message:*"])
    sql("INSERT INTO cable_events (account_id, event, data) "
        "SELECT 1, 'message.created', jsonb_build_object('id', 800 + n) FROM generate_series(1, 50) n")
    for n in range(1, 51):
        sql("INSERT INTO cable_events (account_id, event, data) VALUES (1, 'message.created', '{\"id\": %d}')" % (900 + n))
    ids = [alice.event()["data"]["id"] for _ in range(100)]
    assert ids == list(range(801, 851)) + list(range(901, 951)), ids
    alice.close()


def unsubscribe():
    alice = Feed("demo-user-alice")
    alice.subscribe_ok(["account_id:1:message:*", "account_id:1:contact:*"])
    alice.send({"type": "unsubscribe", "topics": ["account_id:1:message:*"]})
    assert alice.next() == {"type": "unsubscribed", "topics": ["account_id:1:message:*"]}
    publish(1, "message.created", {"id": 1001})
    publish(1, "contact.updated", {"id": 1002})
    assert alice.event()["topic"] == "account_id:1:contact:1002"
    alice.close()


def bad_input():
    alice = Feed("demo-user-alice")
    for bad in ["not json", json.dumps({"type": "listen"}), json.dumps({"type": "subscribe", "topics": "x"})]:
        alice.send(bad)
        code, _ = alice.error()
        assert code == "bad_request", (bad, code)
    answer = alice.subscribe(["account_id:1:message", "account_id:1:message:*"])
    assert answer == {"type": "subscribed", "topics": ["account_id:1:message:*"]}, answer
    assert alice.error() == ("bad_topic", "account_id:1:message")
    publish(1, "message.created", {"id": 1101})
    assert alice.event()["topic"] == "account_id:1:message:1101"
    alice.close()


def limits():
    alice = Feed("demo-user-alice")
    topics = ["account_id:1:r%d:*" % n for n in range(6)]
    answer = alice.subscribe(topics)
    assert answer == {"type": "subscribed", "topics": topics[:5]}, answer
    assert alice.error() == ("limit_exceeded", topics[5])
    alice.send("x" * 70000)
    code = alice.wait_closed(WAIT)
    assert code == 1008, code


def two_processes():
    feeds = [Feed("demo-user-bob", URL), Feed("demo-user-bob", URL_2)]
    for feed in feeds:
        feed.subscribe_ok(["user_id:2:message:*"])
    for n in range(1, 6):
        publish(1, "message.created", {"id": 1200 + n}, inbox_id=1)
    for feed in feeds:
        assert [feed.event()["data"]["id"] for _ in range(5)] == [1201, 1202, 1203, 1204, 1205]
        feed.close()


def revocation():
    sql("INSERT INTO users (id, name, email, pubsub_token) VALUES (90, 'Rita', 'rita@example.com', 'py-rita')")
    sql("INSERT INTO account_users (account_id, user_id, role) VALUES (1, 90, 0)")
    rita = Feed("py-rita")
    rita.subscribe_ok(["user_id:90:*:*"])
    other = Feed("demo-user-alice", URL_2)
    other.subscribe_ok(["user_id:1:*:*"])
    started = time.monotonic()
    sql("UPDATE users SET pubsub_token = 'py-rita-2' WHERE id = 90")
    assert rita.wait_closed(5.0) == 4001
    print("   closed %.1f s after the rotation" % (time.monotonic() - started))
    publish(1, "conversation.updated", {"id": 1301})
    assert other.event()["topic"] == "user_id:1:conversation:1301"
    other.close()


def shutdown():
    doomed = Feed("demo-user-alice", os.environ["DOOMED_URL"])
    doomed.subscribe_ok(["user_id:1:*:*"])
    os.kill(int(os.environ["DOOMED_PID"]), signal.SIGTERM)
    code = doomed.wait_closed(WAIT)
    assert code == 1012, code


SCENARIOS = [
    refused_before_the_upgrade, permissions, wildcards_and_filters,
    one_copy_for_overlapping_topics, order_under_fifty_events, unsubscribe, bad_input, limits,
    two_processes, revocation, shutdown,
]

if __name__ == "__main__":
    for scenario in SCENARIOS:
        scenario()
        print("ok", scenario.__name__, flush=True)
    print("all scenarios passed", flush=True)
    sys.exit(0)
