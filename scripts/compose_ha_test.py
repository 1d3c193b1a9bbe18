#!/usr/bin/env python3
"""The high-availability topology (compose/ha.yaml) under failures, through both Envoys.

Run by scripts/test-compose-ha.sh (`make test-compose-ha`), which provides the engine, the
images, TOLLGATE_COMPOSE (the Compose command) and TOLLGATE_HA_PROJECT (a project name of
this run's own, so a user's stack is never touched). The stack reads routes.yaml from a
temporary copy of compose/ha/, so edits never reach the checked-in file, and publishes its
ports on free ones.

The scenario: `up`, then every service healthy; a plaintext and a certificate-less client are
refused by a control plane's xDS port and a sidecar's gRPC port (and a client with Envoy's
certificate is not); then requests flow without pause through both Envoys (a public route, a
token-protected one with and without a valid token, and one limited to 10 requests a second
per client) while, one at a time:
  1. the control plane holding the Envoys' streams is stopped; both streams are then on the
     other one; routes.yaml is edited and the new route answers through both Envoys; the
     stopped one starts again and serves the same version;
  2. ext-authz-1 is killed, then started again;
  3. ratelimit-1 is stopped, then started again;
  4. the other control plane, which now holds both streams, is cut off its network (`docker
     network disconnect`: no process stops, its peers just get no answer); both streams move;
     routes.yaml is edited and the route answers through both Envoys; after CUT_SECONDS the
     network returns and both control planes serve the same version.
Every request's answer must be the one routes.yaml gives it (the limited route: 200 or 429,
and no more 200s than its limit allows beyond those Envoy let through unchecked, as
failure_mode_deny: false says); a table shows them by phase. Envoy's own counters show it
reached xDS and both sidecars over TLS. Waits poll for the state they wait for, with
generous deadlines; the fixed-length windows are traffic measured under a failure, never a
synchronisation.
"""

import http.client
import json
import math
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict

ROOT = pathlib.Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose" / "ha.yaml"
ROUTES_SOURCE = ROOT / "compose" / "ha" / "routes.yaml"

# A cold `up` on a busy 2-core machine starts 20 containers a dependency level at a time.
START_PATIENCE = 300
# Polls for a state that should come within seconds: a stream moving to another control
# plane (HTTP/2 keepalive notices a cut within 4 s), an edit reaching Envoy, a replica
# healthy again after its start.
PATIENCE = 60
# How long control-plane-2 stays cut off, and how long traffic runs under the other
# failures and between them.
CUT_SECONDS = 20
FAILURE_SECONDS = 8
QUIET_SECONDS = 4
# Each traffic worker sends a request every PACE seconds at most: 8 workers, about 160
# requests a second in all, which a loaded 2-core machine serves.
PACE = 0.05
LIMIT_PER_SECOND = 10  # the `limited` route in compose/ha/routes.yaml
ENVOYS = ("envoy-1", "envoy-2")
CONTROL_PLANES = ("control-plane-1", "control-plane-2")


class Failed(Exception):
    """A check or a wait that did not hold; the run ends with the stack's logs."""


def log(message):
    print(f"test-compose-ha: {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(args, check=True, stdin=None):
    result = subprocess.run(args, input=stdin, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise Failed(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def eventually(what, check, patience=PATIENCE):
    """Polls `check` (returns a truthy value when done) until it is done or `patience` ends."""
    deadline = time.monotonic() + patience
    last = None
    while True:
        try:
            value = check()
            if value:
                return value
        except (OSError, http.client.HTTPException, ValueError, Failed) as error:
            last = error
        if time.monotonic() > deadline:
            raise Failed(f"{what}: not within {patience} s (last error: {last})")
        time.sleep(0.1)


def http_get(port, path, headers=None, timeout=5):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        conn.close()


class Stack:
    """The compose project: its ports, its routes directory, its containers."""

    def __init__(self):
        self.command = os.environ.get("TOLLGATE_COMPOSE", "docker compose").split()
        self.project = os.environ.get("TOLLGATE_HA_PROJECT", f"tollgate-ha-test-{os.getpid()}")
        self.routes_dir = pathlib.Path(tempfile.mkdtemp(prefix="tollgate-ha-routes"))
        # The services run as unprivileged users: readable by all, as a checkout is.
        self.routes_dir.chmod(0o755)
        self.write_routes(ROUTES_SOURCE.read_text())
        self.envoy_port = {envoy: free_port() for envoy in ENVOYS}
        self.admin_port = {cp: free_port() for cp in CONTROL_PLANES}
        self.env = dict(
            os.environ,
            TOLLGATE_ROUTES_DIR=str(self.routes_dir),
            TOLLGATE_ENVOY_1_PORT=str(self.envoy_port["envoy-1"]),
            TOLLGATE_ENVOY_2_PORT=str(self.envoy_port["envoy-2"]),
            TOLLGATE_CP_1_ADMIN_PORT=str(self.admin_port["control-plane-1"]),
            TOLLGATE_CP_2_ADMIN_PORT=str(self.admin_port["control-plane-2"]),
        )
        self.ids = {}

    def compose(self, *args, check=True):
        full = [*self.command, "--project-name", self.project, "-f", str(COMPOSE_FILE), *args]
        result = subprocess.run(full, capture_output=True, text=True, env=self.env,
                                stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise Failed(f"compose {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def container(self, service):
        if service not in self.ids:
            # -a: Compose v2 lists only running containers otherwise (a one-shot has exited).
            ids = self.compose("ps", "-a", "-q", service).split()
            if len(ids) != 1:
                raise Failed(f"{service}: containers {ids}")
            self.ids[service] = ids[0]
        return self.ids[service]

    def state(self, service):
        """`running healthy`, `exited none 0`, …"""
        fmt = "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.State.ExitCode}}"
        return run(["docker", "inspect", "--format", fmt, self.container(service)]).strip()

    def up(self):
        self.compose("up", "-d", "--no-build")
        services = self.compose("config", "--services").split()
        services = [s for s in services if s != "tokens"]

        def all_ready():
            waiting = []
            for service in services:
                status, health, code = self.state(service).split()
                one_shot_done = status == "exited" and health == "none" and code == "0"
                if not (status == "running" and health in ("healthy", "none")) and not one_shot_done:
                    waiting.append(f"{service}: {status} {health} {code}")
            if waiting:
                raise Failed("; ".join(waiting))
            return True

        eventually("every service healthy", all_ready, START_PATIENCE)
        return services

    def wait_healthy(self, service):
        def healthy():
            state = self.state(service)
            if state.split()[:2] != ["running", "healthy"]:
                raise Failed(f"{service}: {state}")
            return True

        eventually(f"{service} healthy", healthy)

    def network(self):
        inspect = run(["docker", "inspect", "--format",
                       "{{range $name, $_ := .NetworkSettings.Networks}}{{$name}} {{end}}",
                       self.container("control-plane-1")])
        (name,) = inspect.split()
        return name

    def volume(self, service, destination):
        """The volume `service` mounts at `destination`, as Compose named it for this project."""
        fmt = '{{range .Mounts}}{{if eq .Destination "%s"}}{{.Name}}{{end}}{{end}}' % destination
        return run(["docker", "inspect", "--format", fmt, self.container(service)]).strip()

    def token(self, subject, tier):
        token = self.compose("run", "--rm", "-T", "tokens", subject, tier).strip()
        if token.count(".") != 2:
            raise Failed(f"the tokens service printed no token: {token!r}")
        return token

    def status(self, control_plane):
        status, _, body = http_get(self.admin_port[control_plane], "/status")
        if status != 200:
            raise Failed(f"{control_plane} /status: {status}")
        return json.loads(body)

    def nodes_on(self, control_plane):
        return {n["id"] for n in self.status(control_plane)["nodes"] if n["connected"]}

    def write_routes(self, text):
        """As an editor saves: a new file renamed over the old one."""
        staged = self.routes_dir / ".routes.yaml.new"
        staged.write_text(text)
        staged.chmod(0o644)
        staged.rename(self.routes_dir / "routes.yaml")

    def read_routes(self):
        return (self.routes_dir / "routes.yaml").read_text()

    def logs(self, *services):
        return self.compose("logs", "--no-color", "--tail", "40", *services, check=False)

    def down(self):
        self.compose("down", "-v", "--remove-orphans", "--timeout", "10", check=False)
        shutil.rmtree(self.routes_dir, ignore_errors=True)


# Run inside the demo image on the stack's network, with the control planes' pki volume (the
# CAs) at /pki and envoy-1's (its certificate) at /envoy-1: connects to xDS and
# to a sidecar in plaintext, over TLS without a client certificate, and over TLS with one
# from the right CA, and says for each whether the server answered HTTP/2 (a SETTINGS frame).
PROBE = r'''
import socket, ssl, sys
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
def answer(sock):
    sock.settimeout(5)
    sock.sendall(PREFACE)
    data = b""
    while len(data) < 9:
        chunk = sock.recv(9 - len(data))
        if not chunk:
            return "closed"
        data += chunk
    return "http2" if data[3] == 4 else "bytes %r" % data[:9]
def probe(host, port, ca=None, name=None, cert=None):
    try:
        with socket.create_connection((host, port), timeout=5) as raw:
            if ca is None:
                return answer(raw)
            ctx = ssl.create_default_context(cafile="/pki/%s.pem" % ca)
            ctx.set_alpn_protocols(["h2"])
            if cert:
                ctx.load_cert_chain("/%s/%s.pem" % (cert, cert), "/%s/%s.key" % (cert, cert))
            with ctx.wrap_socket(raw, server_hostname=name) as tls:
                return answer(tls)
    except (OSError, ssl.SSLError) as error:
        return "refused: %s" % error
for label, host, port, ca, name, cert in [
    ("xds plaintext", "control-plane-1", 18000, None, None, None),
    ("xds tls, no client certificate", "control-plane-1", 18000, "xds-ca", "xds.tollgate.internal", None),
    ("xds tls, envoy-1's certificate", "control-plane-1", 18000, "xds-ca", "xds.tollgate.internal", "envoy-1"),
    ("ext-authz plaintext", "ext-authz-1", 9191, None, None, None),
    ("ext-authz tls, no client certificate", "ext-authz-1", 9191, "sidecars-ca", "sidecars.tollgate.internal", None),
    ("ratelimit tls, no client certificate", "ratelimit-1", 8081, "sidecars-ca", "sidecars.tollgate.internal", None),
]:
    print("%s\t%s" % (label, probe(host, port, ca, name, cert)))
'''


def both_count_both_envoys(stack):
    """Each control plane counts both Envoys in their group: its own and its peer's."""
    def check():
        groups = {cp: stack.status(cp).get("budget_sharing", {}).get("groups", {})
                  for cp in CONTROL_PLANES}
        if any(g.get("tollgate") != 2 for g in groups.values()):
            raise Failed(f"Envoys per group: {groups}")
        return groups
    return check


def only_authenticated_clients_are_served(stack, checks):
    output = run(["docker", "run", "--rm", "-i", "--user", "0", "--network", stack.network(),
                  "-v", f"{stack.volume('control-plane-1', '/etc/tollgate/pki')}:/pki:ro",
                  "-v", f"{stack.volume('envoy-1', '/etc/tollgate/envoy-1')}:/envoy-1:ro",
                  "tollgate-demo:local", "python3", "-"],
                 stdin=PROBE)
    results = dict(line.split("\t", 1) for line in output.strip().splitlines())
    for label, result in results.items():
        log(f"probe {label}: {result}")
        served = result == "http2"
        want = label == "xds tls, envoy-1's certificate"
        checks.expect(served == want, f"{label}: {'served' if want else 'refused'} ({result})")


# The private keys each service's user can read, where the stack mounts certificates: its
# own and no other's (ha-pki gives each service a volume of its own).
READABLE_KEYS = {
    "envoy-1": {"/etc/tollgate/envoy-1/envoy-1.key"},
    "envoy-2": {"/etc/tollgate/envoy-2/envoy-2.key"},
    "control-plane-1": {"/etc/tollgate/pki/xds-server.key", "/etc/tollgate/pki/gateway-client.key"},
    "control-plane-2": {"/etc/tollgate/pki/xds-server.key", "/etc/tollgate/pki/gateway-client.key"},
    "ext-authz-1": {"/etc/tollgate/pki/ext-authz.key"},
    "ext-authz-2": {"/etc/tollgate/pki/ext-authz.key"},
    "ratelimit-1": {"/etc/tollgate/pki/ratelimit.key"},
    "ratelimit-2": {"/etc/tollgate/pki/ratelimit.key"},
}
LIST_READABLE_KEYS = 'for f in /etc/tollgate/*/*.key /etc/tollgate/*/*/*.key; do [ -r "$f" ] && echo "$f"; done; true'


def each_service_reads_only_its_own_keys(stack, checks):
    for service, want in READABLE_KEYS.items():
        found = set(run(["docker", "exec", stack.container(service), "sh", "-c",
                         LIST_READABLE_KEYS]).split())
        checks.expect(found == want, f"{service} can read exactly its own keys ({sorted(found)})")


def envoys_take_their_xds_tls_through_sds(stack, checks):
    """Each Envoy's xDS certificate and CA come from SDS files (`--xds-sds-file`), so that
    they are re-read when replaced: its TLS context was built from them (once per secret)."""
    stats = envoy_stats(stack)
    for envoy in ENVOYS:
        updates = stats[envoy].get(SDS_UPDATES, 0)
        checks.expect(updates >= 2, f"{envoy}'s xDS certificate and CA come through SDS "
                      f"({updates} context updates)")


SDS_UPDATES = "cluster.tollgate_xds.client_ssl_socket_factory.ssl_context_update_by_sds"

# Run as root in the demo image with envoy-1's volume at /v: a new CA appended to the xDS CA
# bundle, the bundle replaced by rename, as the first step of a CA rotation does.
APPEND_A_CA = (
    'openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 '
    '-subj "/CN=Tollgate HA demo next xds-ca" -keyout /tmp/next.key -out /tmp/next.pem 2>/dev/null '
    '&& cat /v/xds-ca.pem /tmp/next.pem >/v/.xds-ca.pem.new && chmod 0644 /v/.xds-ca.pem.new '
    '&& mv /v/.xds-ca.pem.new /v/xds-ca.pem')


def envoy_rereads_a_replaced_ca_bundle(stack, checks):
    """envoy-1's xDS CA bundle replaced (the old CA and a new one) in its volume: Envoy
    rebuilds its xDS TLS context from it, without a restart; the scenario's control-plane
    stop and cut then make it reconnect through that bundle."""
    before = envoy_stats(stack)["envoy-1"].get(SDS_UPDATES, 0)
    run(["docker", "run", "--rm", "--user", "0",
         "-v", f"{stack.volume('envoy-1', '/etc/tollgate/envoy-1')}:/v",
         "tollgate-demo:local", "sh", "-c", APPEND_A_CA])
    eventually("envoy-1 re-reads its replaced CA bundle",
               lambda: envoy_stats(stack)["envoy-1"].get(SDS_UPDATES, 0) > before)
    checks.expect(True, "envoy-1 re-read its replaced xDS CA bundle without a restart")


class Traffic:
    """Workers sending requests through both Envoys until stopped; every answer recorded."""

    KINDS = ("public", "token", "no-token", "limited")

    def __init__(self, stack, token):
        self.stack = stack
        self.requests = {
            "public": ("/api/v1/catalogue/shoes", {}),
            "token": ("/api/v1/invoices/42", {"authorization": f"Bearer {token}"}),
            "no-token": ("/api/v1/invoices/42", {}),
            "limited": ("/api/v1/limited/7", {}),
        }
        self.phase = "baseline"
        self.records = []  # (phase, envoy, kind, outcome, sent_at, detail)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self.worker, args=(envoy, kind), daemon=True)
            for envoy in ENVOYS for kind in self.KINDS
        ]

    def start(self):
        for thread in self.threads:
            thread.start()

    def stop(self):
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def set_phase(self, phase):
        with self.lock:
            self.phase = phase

    def sent(self):
        with self.lock:
            return len(self.records)

    @staticmethod
    def judge(kind, status, headers, body):
        """What routes.yaml says this answer may be: the outcome, or None if it is not."""
        try:
            upstream = json.loads(body).get("upstream") if status == 200 else None
        except ValueError:
            upstream = None
        if kind == "public" and status == 200 and upstream == "account-service":
            return "200"
        if kind == "token" and status == 200 and upstream in ("invoice-service", "invoice-service-2"):
            forwarded = json.loads(body)["headers"].get("x-consumer-id")
            return "200" if forwarded == "ha-traffic" else None
        if kind == "no-token" and status == 401:
            challenge = dict((k.lower(), v) for k, v in headers).get("www-authenticate", "")
            return "401" if challenge.startswith("Bearer ") else None
        if kind == "limited" and status == 200 and upstream == "account-service":
            return "200"
        if kind == "limited" and status == 429:
            return "429"
        return None

    def worker(self, envoy, kind):
        port = self.stack.envoy_port[envoy]
        path, headers = self.requests[kind]
        conn = None
        while not self.stopping.is_set():
            began = time.monotonic()
            sent_at = time.time()
            with self.lock:
                phase = self.phase
            detail = ""
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                body = response.read()
                outcome = self.judge(kind, response.status, response.getheaders(), body)
                if outcome is None:
                    outcome = "unexpected"
                    detail = f"{response.status} {body[:200]!r}"
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as error:
                outcome = "unexpected"
                detail = f"{type(error).__name__}: {error}"
                if conn is not None:
                    conn.close()
                conn = None
            with self.lock:
                self.records.append((phase, envoy, kind, outcome, sent_at, detail))
            self.stopping.wait(max(0.0, PACE - (time.monotonic() - began)))
        if conn is not None:
            conn.close()


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = []

    def expect(self, condition, what):
        if condition:
            self.passed += 1
        else:
            self.failed.append(what)
            log(f"FAILED: {what}")


def measure(traffic, seconds):
    """Lets traffic run under the current state for `seconds` (a measurement window)."""
    traffic.stopping.wait(seconds)


def stream_holder(stack):
    """The control plane holding most of the Envoys' streams, once each Envoy holds one."""

    def holder():
        held = {cp: stack.nodes_on(cp) for cp in CONTROL_PLANES}
        if set().union(*held.values()) != set(ENVOYS):
            raise Failed(f"streams {held}")
        return max(CONTROL_PLANES, key=lambda cp: len(held[cp]))

    return holder


def streams_all_on(stack, control_plane):
    def on():
        nodes = stack.nodes_on(control_plane)
        if not set(ENVOYS) <= nodes:
            raise Failed(f"{control_plane} holds {sorted(nodes)}")
        return True

    return on


def add_route(stack, name):
    """A route /NAME → account-service at the top of routes.yaml; returns the edit's time."""
    route = (f"  - name: {name}\n    listener: public\n    match: {{prefix: /{name}}}\n"
             f"    service: account-service\n    rewrite_prefix: /accounts\n\n")
    text = stack.read_routes()
    edited = text.replace("routes:\n", f"routes:\n{route}", 1)
    assert edited != text
    stack.write_routes(edited)
    return time.monotonic()


def answers_through_both_envoys(stack, name):
    def answered():
        for envoy in ENVOYS:
            status, _, body = http_get(stack.envoy_port[envoy], f"/{name}/7")
            if status != 200 or json.loads(body).get("upstream") != "account-service":
                raise Failed(f"{envoy}: {status}")
        return True

    return answered


def same_version(stack):
    def same():
        versions = {cp: stack.status(cp)["version"] for cp in CONTROL_PLANES}
        if len(set(versions.values())) != 1:
            raise Failed(f"versions {versions}")
        return versions["control-plane-1"]

    return same


def scenario(stack, checks, notes, running):
    started = time.monotonic()
    stack.up()
    notes.append(("up, every service healthy", f"{time.monotonic() - started:.1f} s"))

    only_authenticated_clients_are_served(stack, checks)
    each_service_reads_only_its_own_keys(stack, checks)
    envoys_take_their_xds_tls_through_sds(stack, checks)
    envoy_rereads_a_replaced_ca_bundle(stack, checks)

    token = stack.token("ha-traffic", "premium")
    traffic = Traffic(stack, token)
    running.append(traffic)
    traffic.start()
    eventually("traffic under way", lambda: traffic.sent() >= 20)
    measure(traffic, QUIET_SECONDS)

    # 1. The control plane holding the streams stopped: they move to the other one; an edit
    # made while it is down reaches both Envoys.
    first = eventually("both Envoys' streams held", stream_holder(stack))
    second, = (cp for cp in CONTROL_PLANES if cp != first)
    notes.append(("streams at start", json.dumps({cp: sorted(stack.nodes_on(cp)) for cp in CONTROL_PLANES})))
    groups = eventually("both control planes count both Envoys", both_count_both_envoys(stack))
    checks.expect(True, "each control plane counts both Envoys for local limits, wherever "
                  f"their streams are (--peer): {json.dumps(groups)}")
    traffic.set_phase(f"{first} stopped")
    began = time.monotonic()
    run(["docker", "stop", stack.container(first)])
    stopped = time.monotonic()
    eventually(f"both streams on {second}", streams_all_on(stack, second))
    notes.append((f"{first} stopped ({stopped - began:.2f} s): both streams on {second} "
                  f"{time.monotonic() - began:.2f} s after the stop began", ""))
    edited = add_route(stack, "ha-edit-1")
    eventually(f"the edit made while {first} was down answers through both Envoys",
               answers_through_both_envoys(stack, "ha-edit-1"))
    notes.append(("  edit ha-edit-1 answered through both Envoys after",
                  f"{time.monotonic() - edited:.2f} s"))
    checks.expect(True, f"an edit made while {first} was stopped reached both Envoys")
    measure(traffic, FAILURE_SECONDS / 2)
    run(["docker", "start", stack.container(first)])
    stack.wait_healthy(first)
    version = eventually("both control planes serve one version", same_version(stack))
    checks.expect(True, f"{first} restarted serves the edited routes ({version})")
    traffic.set_phase(f"{first} back")
    measure(traffic, QUIET_SECONDS)

    # 2. An ext-authz replica killed.
    before_kill = envoy_stats(stack)
    traffic.set_phase("ext-authz-1 killed")
    run(["docker", "kill", stack.container("ext-authz-1")])
    measure(traffic, FAILURE_SECONDS)
    run(["docker", "start", stack.container("ext-authz-1")])
    stack.wait_healthy("ext-authz-1")
    traffic.set_phase("ext-authz-1 back")
    notes.extend(counter_changes(before_kill, envoy_stats(stack), "ext_authz",
                                 "ext-authz-1 killed and back"))
    measure(traffic, QUIET_SECONDS)

    # 3. A rate-limit replica stopped.
    traffic.set_phase("ratelimit-1 stopped")
    run(["docker", "stop", stack.container("ratelimit-1")])
    measure(traffic, FAILURE_SECONDS)
    run(["docker", "start", stack.container("ratelimit-1")])
    stack.wait_healthy("ratelimit-1")
    traffic.set_phase("ratelimit-1 back")
    measure(traffic, QUIET_SECONDS)

    # 4. The other control plane, which now holds both streams, cut off its network:
    # nothing stops, nothing is refused; Envoy must notice by itself.
    network = stack.network()
    traffic.set_phase(f"{second} cut off")
    notes.append(("streams before the cut", json.dumps({cp: sorted(stack.nodes_on(cp)) for cp in CONTROL_PLANES})))
    run(["docker", "network", "disconnect", network, stack.container(second)])
    cut = time.monotonic()
    try:
        eventually(f"both streams on {first}", streams_all_on(stack, first))
        notes.append((f"{second} cut off: both streams on {first} after",
                      f"{time.monotonic() - cut:.2f} s"))
        edited = add_route(stack, "ha-edit-2")
        eventually(f"the edit made while {second} was cut off answers through both Envoys",
                   answers_through_both_envoys(stack, "ha-edit-2"))
        notes.append(("  edit ha-edit-2 answered through both Envoys after",
                      f"{time.monotonic() - edited:.2f} s"))
        checks.expect(True, f"an edit made while {second} was cut off reached both Envoys")
        measure(traffic, max(0.0, CUT_SECONDS - (time.monotonic() - cut)))
    finally:
        # Back under the service's name on the network, as Compose had attached it.
        run(["docker", "network", "connect", "--alias", second, network, stack.container(second)])
    notes.append((f"{second} reconnected after a cut of", f"{time.monotonic() - cut:.1f} s"))
    traffic.set_phase(f"{second} back")
    version = eventually("both control planes serve one version after the cut", same_version(stack))
    checks.expect(True, f"{second} back serves the same version ({version})")
    measure(traffic, QUIET_SECONDS)
    traffic.stop()
    notes.append(("up and scenario", f"{time.monotonic() - started:.1f} s"))

    account(traffic, checks, envoy_stats(stack))


def account(traffic, checks, stats):
    phases = []
    for record in traffic.records:
        if record[0] not in phases:
            phases.append(record[0])
    by_phase = defaultdict(Counter)
    by_envoy = defaultdict(Counter)
    unexpected = []
    for phase, envoy, kind, outcome, _, detail in traffic.records:
        by_phase[phase][(kind, outcome)] += 1
        by_phase[phase]["all"] += 1
        by_envoy[envoy][kind] += 1
        if outcome == "unexpected":
            unexpected.append((phase, envoy, kind, detail))

    columns = [("public 200", ("public", "200")), ("token 200", ("token", "200")),
               ("no-token 401", ("no-token", "401")), ("limited 200", ("limited", "200")),
               ("limited 429", ("limited", "429"))]
    header = f"{'phase':<26} {'requests':>8} " + " ".join(f"{c:>12}" for c, _ in columns) + f" {'unexpected':>10}"
    lines = [header, "-" * len(header)]
    total = Counter()
    for phase in phases:
        counts = by_phase[phase]
        bad = sum(v for k, v in counts.items() if isinstance(k, tuple) and k[1] == "unexpected")
        lines.append(f"{phase:<26} {counts['all']:>8} "
                     + " ".join(f"{counts[key]:>12}" for _, key in columns) + f" {bad:>10}")
        total.update(counts)
        total["unexpected"] += bad
    lines.append("-" * len(header))
    lines.append(f"{'all':<26} {total['all']:>8} "
                 + " ".join(f"{total[key]:>12}" for _, key in columns) + f" {total['unexpected']:>10}")
    print("\n".join(lines), flush=True)
    print("by Envoy: " + "; ".join(
        f"{envoy}: " + ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))
        for envoy, kinds in sorted(by_envoy.items())), flush=True)

    # The limited route: one limit in Redis for both Envoys and every rate-limit replica.
    admitted = [r[4] for r in traffic.records if r[2] == "limited" and r[3] == "200"]
    per_second = Counter(math.floor(t) for t in admitted)
    seconds = len({math.floor(r[4]) for r in traffic.records if r[2] == "limited"})
    phase_of = {math.floor(r[4]): r[0] for r in traffic.records}
    over = sorted((n, s) for s, n in per_second.items() if n > LIMIT_PER_SECOND)
    print(f"limited route: {len(admitted)} admitted in {seconds} s of traffic (limit "
          f"{LIMIT_PER_SECOND}/s, both Envoys together); seconds over the limit: {len(over)}"
          + "".join(f"; {n} in a second of [{phase_of[s]}]" for n, s in over), flush=True)

    for phase, envoy, kind, detail in unexpected[:20]:
        print(f"unexpected: [{phase}] {envoy} {kind}: {detail}", flush=True)
    checks.expect(not unexpected, f"every request answered as routes.yaml says ({len(unexpected)} unexpected "
                  f"of {total['all']})")
    for phase in phases:
        for envoy in ENVOYS:
            sent = sum(1 for r in traffic.records if r[0] == phase and r[1] == envoy)
            checks.expect(sent >= 10, f"[{phase}] {envoy} carried traffic ({sent} requests)")
    checks.expect(total[("limited", "429")] > 0, "the limited route refused past its limit (429)")
    # One limit for both Envoys and both replicas: beyond it, a request passes only where
    # Envoy let it through unchecked as routes.yaml says (failure_mode_deny: false, the check
    # failed or outlasted the sidecar's timeout), which Envoy counts.
    fail_open = stat_sum(stats, ".ratelimit.failure_mode_allowed")
    print(f"limited route, Envoy's counts: ok {stat_sum(stats, '.ratelimit.ok')}, over_limit "
          f"{stat_sum(stats, '.ratelimit.over_limit')}, error {stat_sum(stats, '.ratelimit.error')}, "
          f"failure_mode_allowed {fail_open}", flush=True)
    checks.expect(len(admitted) - fail_open <= LIMIT_PER_SECOND * (seconds + 1),
                  f"the limited route admitted at most its limit, both Envoys together, beyond "
                  f"what failed open ({len(admitted)} admitted, {fail_open} failed open, {seconds} s)")

    # Envoy reached xDS and both sidecars over TLS: its own count of handshakes.
    for envoy in ENVOYS:
        for cluster in ("tollgate_xds", "tollgate_ext_authz", "tollgate_ratelimit"):
            count = stats[envoy].get(f"cluster.{cluster}.ssl.handshake", 0)
            checks.expect(count > 0, f"{envoy} reached {cluster} over TLS ({count} handshakes)")


def envoy_stats(stack):
    """Each Envoy's counters from its admin port (loopback in its container: no curl there)."""
    stats = {}
    for envoy in ENVOYS:
        text = run(["docker", "exec", stack.container(envoy), "bash", "-c",
                    "exec 3<>/dev/tcp/127.0.0.1/9901; printf 'GET /stats?usedonly HTTP/1.1\\r\\n"
                    "Host: x\\r\\nConnection: close\\r\\n\\r\\n' >&3; cat <&3"])
        counters = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            if value.isdigit():
                counters[name] = int(value)
        stats[envoy] = counters
    return stats


def counter_changes(before, after, part, what):
    """Notes naming each Envoy's counters containing `part` that changed between two
    snapshots: how Envoy lived through `what` (retries, resets, timeouts, ejections)."""
    notes = []
    for envoy in ENVOYS:
        changed = {name: value - before[envoy].get(name, 0) for name, value in after[envoy].items()
                   if part in name and value != before[envoy].get(name, 0)}
        notes.append((f"{envoy}'s {part} counters over [{what}]",
                      ", ".join(f"{name} +{delta}" for name, delta in sorted(changed.items()))))
    return notes


def stat_sum(stats, suffix):
    return sum(v for counters in stats.values() for k, v in counters.items() if k.endswith(suffix))


def main():
    stack = Stack()
    checks = Checks()
    notes = []
    began = time.monotonic()
    log(f"project {stack.project}, Envoys on {stack.envoy_port}, control planes' admin on {stack.admin_port}")
    running = []
    try:
        scenario(stack, checks, notes, running)
    except Exception as error:  # noqa: BLE001 - any failure ends the run with the stack's logs
        checks.failed.append(f"{type(error).__name__}: {error}")
        log(f"FAILED: {error}")
        print(stack.logs(), file=sys.stderr)
    finally:
        for traffic in running:
            traffic.stop()
        for what, value in notes:
            print(f"{what}: {value}" if value else what, flush=True)
        downed = time.monotonic()
        stack.down()
        log(f"down in {time.monotonic() - downed:.1f} s; {time.monotonic() - began:.1f} s in all")
    for failure in checks.failed:
        print(f"failed: {failure}", flush=True)
    print(f"test-compose-ha: {checks.passed} passed, {len(checks.failed)} failed", flush=True)
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
