#!/usr/bin/env python3
"""A test double of a Windows WinRM listener, written from MS-WSMV (Web Services
Management Protocol Extensions for Windows Vista), not from Stella's client.

Implements:
  - HTTP(S) POST of SOAP 1.2 envelopes to /wsman (MS-WSMV 2.2.1, 2.2.9.1);
  - authentication: Basic (RFC 7617), and NTLM over `Authorization: Negotiate|NTLM`
    (MS-WSMV 2.2.9.1, MS-NLMP 3.2.5) verified by pyspnego's NTLM acceptor, one
    authenticated state per TCP connection as Windows keeps it;
  - the remote shell of resource URI .../windows/shell/cmd (MS-WSMV 3.1.4.1.30 ff.):
    WS-Transfer Create (ShellId in the ResourceCreated selector and rsp:Shell),
    Command (rsp:CommandLine), Receive (rsp:Stream base64 chunks of stdout and stderr,
    rsp:CommandState with ExitCode), Signal (terminate) and WS-Transfer Delete;
  - the w:TimedOut fault (WSManFault code 2150858793) when a Receive has nothing to
    return within the request's OperationTimeout (MS-WSMV 3.1.4.14.2);
  - SOAP faults for unknown actions, resource URIs, shells and commands.

  - message encryption over plain HTTP (MS-WSMV 2.2.9.1.1): `multipart/encrypted`
    bodies of protocol application/HTTP-SPNEGO-session-encrypted, unsealed and verified
    by pyspnego's NTLM context (`unwrap_winrm`), answers sealed with it (`wrap_winrm`);
    over plain HTTP an unencrypted envelope is refused, as with AllowUnencrypted=false.

Not implemented: Kerberos, CredSSP, stdin (Send), WS-Enumeration, WMI resources, shell
options' effects, quotas.

Commands run on this (Linux) host, not in PowerShell. A command line
`powershell[.exe] … -EncodedCommand B64` is decoded (base64 of UTF-16LE) and then:
  - a script opening with `# stella: read-dir` prints `NAME<TAB>BASE64` for each file in
    its `$dir = '…'`;
  - a script opening with `# stella: write-files` writes each `$path = '…'` /
    `$bytes = [Convert]::FromBase64String('…')` pair (through a .tmp file), then
    removes the `.done-*` files in `$dir = '…'` other than `$keep = '…'`;
  - any other script: its leading `$env:NAME = '…'` lines become environment variables
    and the rest runs with /bin/sh (so test scripts are written in what PowerShell and sh
    share: `echo`, `exit N`, `echo x >&2` is sh only).
Any other command line runs with /bin/sh -c. Windows paths `C:\\a\\b` map to
`ROOT/C/a/b`.

Each request the double accepts is appended as one JSON line to --record (client,
action, resource URI, options, body element, auth scheme, header elements), so a test
can compare what two clients sent.

Usage: winrm_double.py --root DIR --user U --password P [--cert PEM --key PEM]
       [--record FILE]; prints `LISTENING <port>` once it listens.
"""

import argparse
import base64
import http.server
import json
import os
import re
import socketserver
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "f": "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault",
}
RESOURCE_CMD = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"
TRANSFER = "http://schemas.xmlsoap.org/ws/2004/09/transfer/"
SHELL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/"
ACTIONS = {
    TRANSFER + "Create": "Create",
    TRANSFER + "Delete": "Delete",
    SHELL + "Command": "Command",
    SHELL + "Receive": "Receive",
    SHELL + "Signal": "Signal",
}
SIGNAL_TERMINATE = SHELL + "signal/terminate"
TIMEOUT_CODE = "2150858793"

ARGS = None
SHELLS = {}
SHELLS_LOCK = threading.Lock()
RECORD_LOCK = threading.Lock()


def q(path):
    """`rsp:A/rsp:B` in ElementTree's `{namespace}local` form."""
    return "/".join("{%s}%s" % (NS[p], local) for p, local in (t.split(":") for t in path.split("/")))


class Command:
    """A process and what it has written so far."""

    def __init__(self, argv, env):
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True
        )
        self.cond = threading.Condition()
        self.chunks = []  # (stream, bytes) not yet received
        self.open_streams = 2
        for stream, pipe in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr)):
            threading.Thread(target=self._pump, args=(stream, pipe), daemon=True).start()

    @classmethod
    def builtin(cls, stdout, code):
        command = cls.__new__(cls)
        command.proc = None
        command.cond = threading.Condition()
        command.chunks = [("stdout", stdout)] if stdout else []
        command.open_streams = 0
        command.code = code
        return command

    def _pump(self, stream, pipe):
        while True:
            data = os.read(pipe.fileno(), 65536)
            with self.cond:
                if not data:
                    self.open_streams -= 1
                    self.cond.notify_all()
                    return
                self.chunks.append((stream, data))
                self.cond.notify_all()

    def done(self):
        if self.proc is None:
            return True
        return self.open_streams == 0 and self.proc.poll() is not None

    def exit_code(self):
        return self.code if self.proc is None else self.proc.returncode

    def receive(self, timeout):
        """Waits up to `timeout` for output or the end; returns (chunks, done) or None."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.chunks and not self.done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(min(left, 0.05))
            # Let a burst of output arrive as one answer.
            chunks, self.chunks = self.chunks, []
        if self.proc is not None and self.open_streams == 0:
            self.proc.wait()
        return chunks, self.done() and not self.chunks

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except ProcessLookupError:
                pass


def windows_path(path):
    drive, _, rest = path.partition(":")
    parts = [p for p in rest.replace("/", "\\").split("\\") if p]
    if ".." in parts:
        raise ValueError("path with ..")
    return os.path.join(ARGS.root, drive.upper(), *parts)


def ps_literals(script, name):
    """The single-quoted literals assigned to `$name = '…'` lines, in order."""
    pattern = r"^\$%s = '((?:[^']|'')*)'" % re.escape(name)
    return [m.replace("''", "'") for m in re.findall(pattern, script, re.M)]


def run_script(script):
    if script.startswith("# stella: read-dir"):
        directory = windows_path(ps_literals(script, "dir")[0])
        lines = []
        if os.path.isdir(directory):
            for name in sorted(os.listdir(directory)):
                full = os.path.join(directory, name)
                if os.path.isfile(full):
                    with open(full, "rb") as f:
                        lines.append("%s\t%s\r\n" % (name, base64.b64encode(f.read()).decode()))
        return Command.builtin("".join(lines).encode(), 0)
    if script.startswith("# stella: write-files"):
        paths = ps_literals(script, "path")
        payloads = re.findall(r"^\$bytes = \[Convert\]::FromBase64String\('([^']*)'\)", script, re.M)
        for path, payload in zip(paths, payloads):
            full = windows_path(path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full + ".tmp", "wb") as f:
                f.write(base64.b64decode(payload))
            os.replace(full + ".tmp", full)
        dirs, keeps = ps_literals(script, "dir"), ps_literals(script, "keep")
        if dirs and keeps:
            directory = windows_path(dirs[0])
            for name in os.listdir(directory) if os.path.isdir(directory) else []:
                if name.startswith(".done-") and name != keeps[0]:
                    os.remove(os.path.join(directory, name))
        return Command.builtin(b"", 0)
    env = dict(os.environ)
    lines = script.split("\n")
    while lines:
        m = re.match(r"^\$env:(\w+) = '((?:[^']|'')*)'$", lines[0])
        if not m:
            break
        env[m.group(1)] = m.group(2).replace("''", "'")
        lines.pop(0)
    return Command(["/bin/sh", "-c", "\n".join(lines)], env)


def start_command(command_line):
    words = command_line.split()
    if words and os.path.basename(words[0]).lower() in ("powershell", "powershell.exe"):
        for i, word in enumerate(words[:-1]):
            if word.lower() in ("-encodedcommand", "-enc", "-e"):
                script = base64.b64decode(words[i + 1]).decode("utf-16-le")
                return run_script(script)
    return Command(["/bin/sh", "-c", command_line], dict(os.environ))


def seconds(duration):
    m = re.match(r"^PT(\d+(?:\.\d+)?)S$", duration or "")
    return float(m.group(1)) if m else 60.0


def envelope(action, message_id, body, header_extra=""):
    return (
        '<s:Envelope xmlns:s="%(s)s" xmlns:a="%(a)s" xmlns:w="%(w)s" xmlns:rsp="%(rsp)s">'
        "<s:Header><a:Action>%(action)s</a:Action><a:MessageID>uuid:%(id)s</a:MessageID>"
        "<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>"
        "<a:RelatesTo>%(relates)s</a:RelatesTo>%(extra)s</s:Header><s:Body>%(body)s</s:Body></s:Envelope>"
    ) % dict(NS, action=action, id=uuid.uuid4(), relates=message_id, extra=header_extra, body=body)


class Fault(Exception):
    def __init__(self, subcode, reason, code="2150858752"):
        super().__init__(reason)
        self.subcode, self.reason, self.code = subcode, reason, code

    def xml(self, message_id):
        body = (
            "<s:Fault><s:Code><s:Value>s:Receiver</s:Value><s:Subcode><s:Value>%s</s:Value></s:Subcode></s:Code>"
            '<s:Reason><s:Text xml:lang="en-US">%s</s:Text></s:Reason>'
            '<s:Detail><f:WSManFault xmlns:f="%s" Code="%s" Machine="winrm-double"><f:Message>%s</f:Message>'
            "</f:WSManFault></s:Detail></s:Fault>"
        ) % (self.subcode, self.reason, NS["f"], self.code, self.reason)
        return envelope("http://schemas.dmtf.org/wbem/wsman/1/wsman/fault", message_id, body)


def handle(root, record):
    header = root.find(q("s:Header"))
    body = root.find(q("s:Body"))
    if header is None or body is None:
        raise Fault("w:InvalidMessage", "no SOAP header or body")
    text = lambda tag: (header.findtext(q(tag)) or "").strip()
    action, resource, message_id = text("a:Action"), text("w:ResourceURI"), text("a:MessageID")
    record.update(
        action=action,
        resource_uri=resource,
        headers=sorted(child.tag.split("}")[1] for child in header),
        options={o.get("Name"): (o.text or "") for o in header.iter(q("w:Option"))},
        body=[child.tag.split("}")[1] for child in body],
    )
    if action not in ACTIONS:
        raise Fault("a:ActionNotSupported", "the action %s is not supported" % action)
    if resource != RESOURCE_CMD:
        raise Fault("w:DestinationUnreachable", "the resource URI %s is not supported" % resource)
    if not header.findtext(q("w:MaxEnvelopeSize")):
        raise Fault("w:InvalidHeader", "no MaxEnvelopeSize")
    name = ACTIONS[action]
    selector = {s.get("Name"): (s.text or "").strip() for s in header.iter(q("w:Selector"))}
    if name == "Create":
        shell_id = str(uuid.uuid4()).upper()
        with SHELLS_LOCK:
            SHELLS[shell_id] = {}
        created = (
            "<x:ResourceCreated xmlns:x=\"%s\"><a:Address>%s</a:Address><a:ReferenceParameters>"
            "<w:ResourceURI>%s</w:ResourceURI><w:SelectorSet><w:Selector Name=\"ShellId\">%s</w:Selector>"
            "</w:SelectorSet></a:ReferenceParameters></x:ResourceCreated>"
            "<rsp:Shell><rsp:ShellId>%s</rsp:ShellId><rsp:ResourceUri>%s</rsp:ResourceUri>"
            "<rsp:InputStreams>stdin</rsp:InputStreams><rsp:OutputStreams>stdout stderr</rsp:OutputStreams></rsp:Shell>"
        ) % (TRANSFER, "https://winrm-double/wsman", RESOURCE_CMD, shell_id, shell_id, RESOURCE_CMD)
        return envelope(TRANSFER + "CreateResponse", message_id, created)
    shell_id = selector.get("ShellId")
    with SHELLS_LOCK:
        shell = SHELLS.get(shell_id)
    if shell is None:
        raise Fault("w:InvalidSelectors", "no shell %s" % shell_id, "2150858843")
    if name == "Delete":
        with SHELLS_LOCK:
            SHELLS.pop(shell_id, None)
        for command in shell.values():
            command.kill()
        return envelope(TRANSFER + "DeleteResponse", message_id, "")
    if name == "Command":
        line = body.find(q("rsp:CommandLine"))
        if line is None:
            raise Fault("w:InvalidMessage", "no CommandLine")
        words = [line.findtext(q("rsp:Command")) or ""]
        words += [a.text or "" for a in line.findall(q("rsp:Arguments"))]
        command_id = str(uuid.uuid4()).upper()
        shell[command_id] = start_command(" ".join(w.strip() for w in words))
        return envelope(
            SHELL + "CommandResponse",
            message_id,
            "<rsp:CommandResponse><rsp:CommandId>%s</rsp:CommandId></rsp:CommandResponse>" % command_id,
        )
    element = body.find(q("rsp:Receive/rsp:DesiredStream")) if name == "Receive" else body.find(q("rsp:Signal"))
    command_id = element.get("CommandId") if element is not None else None
    command = shell.get(command_id)
    if command is None:
        raise Fault("w:InvalidParameter", "no command %s" % command_id, "2150858843")
    if name == "Signal":
        if (body.findtext(q("rsp:Signal/rsp:Code")) or "").strip() == SIGNAL_TERMINATE:
            command.kill()
        return envelope(
            SHELL + "SignalResponse", message_id, "<rsp:SignalResponse/>"
        )
    result = command.receive(seconds(text("w:OperationTimeout")))
    if result is None:
        raise Fault(
            "w:TimedOut",
            "The WS-Management service cannot complete the operation within the time specified in OperationTimeout.",
            TIMEOUT_CODE,
        )
    chunks, done = result
    streams = "".join(
        '<rsp:Stream Name="%s" CommandId="%s">%s</rsp:Stream>' % (stream, command_id, base64.b64encode(data).decode())
        for stream, data in chunks
    )
    if done:
        streams += '<rsp:Stream Name="stdout" CommandId="%s" End="true"></rsp:Stream>' % command_id
        streams += '<rsp:Stream Name="stderr" CommandId="%s" End="true"></rsp:Stream>' % command_id
        state = '<rsp:CommandState CommandId="%s" State="%sCommandState/Done"><rsp:ExitCode>%d</rsp:ExitCode></rsp:CommandState>' % (
            command_id, SHELL, command.exit_code())
    else:
        state = '<rsp:CommandState CommandId="%s" State="%sCommandState/Running"></rsp:CommandState>' % (command_id, SHELL)
    return envelope(SHELL + "ReceiveResponse", message_id, "<rsp:ReceiveResponse>%s%s</rsp:ReceiveResponse>" % (streams, state))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("winrm-double: " + (fmt % args) + "\n")

    def reply(self, status, body=b"", headers=(), content_type="application/soap+xml;charset=UTF-8"):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if body:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def challenge(self, token=None):
        offers = [("WWW-Authenticate", "Negotiate %s" % token)] if token else [
            ("WWW-Authenticate", "Negotiate"),
            ("WWW-Authenticate", 'Basic realm="WSMAN"'),
        ]
        self.reply(401, headers=offers)

    def authenticated(self):
        """Checks the Authorization header; answers the 401 itself when not (yet)."""
        value = self.headers.get("Authorization", "")
        scheme, _, token = value.partition(" ")
        scheme = scheme.lower()
        if getattr(self, "ntlm_done", False) and not value:
            return "ntlm"
        if scheme == "basic":
            try:
                user, _, password = base64.b64decode(token).decode().partition(":")
            except Exception:
                user, password = None, None
            if not self.server_tls:
                # MS-WSMV: Basic only over HTTPS (AllowUnencrypted=false).
                self.challenge()
                return None
            if user == ARGS.user and password == ARGS.password:
                return "basic"
            self.challenge()
            return None
        if scheme in ("negotiate", "ntlm") and token:
            import spnego

            raw = base64.b64decode(token)
            try:
                if raw[8:12] == b"\x01\x00\x00\x00" or not hasattr(self, "ntlm_ctx"):
                    self.ntlm_ctx = spnego.server(protocol="ntlm")
                    self.ntlm_done = False
                out = self.ntlm_ctx.step(raw)
            except Exception as error:
                self.log_message("NTLM refused: %s", error)
                self.ntlm_done = False
                if hasattr(self, "ntlm_ctx"):
                    del self.ntlm_ctx
                self.challenge()
                return None
            if not self.ntlm_ctx.complete:
                self.challenge(base64.b64encode(out).decode())
                return None
            self.ntlm_done = True
            return "ntlm"
        self.challenge()
        return None

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        data = self.rfile.read(length) if length else b""
        if self.path.rstrip("/").lower() != "/wsman":
            self.reply(404)
            return
        auth = self.authenticated()
        if auth is None:
            return
        if not data:
            # NTLM's last leg may come without a body; nothing to answer but success.
            self.reply(200)
            return
        record = {"client": self.headers.get("User-Agent", ""), "auth": auth}
        encrypted = self.headers.get("Content-Type", "").startswith("multipart/encrypted")
        record["encrypted"] = encrypted
        if encrypted:
            if auth != "ntlm":
                self.reply(400)
                return
            try:
                data = decrypt(self.ntlm_ctx, data)
            except Exception as error:
                self.log_message("cannot decrypt: %r", error)
                self.reply(400)
                return
        elif not self.server_tls:
            # AllowUnencrypted=false: plain HTTP carries only encrypted envelopes.
            self.log_message("refused an unencrypted envelope over http")
            self.reply(400, Fault("w:AccessDenied", "unencrypted traffic is not allowed", "5").xml("").encode())
            return
        message_id = ""
        try:
            root = ET.fromstring(data)
            message_id = (root.findtext(".//" + q("a:MessageID")) or "").strip()
            answer, status = handle(root, record), 200
        except Fault as fault:
            answer, status = fault.xml(message_id), 500
            record["fault"] = fault.subcode
        except ET.ParseError as error:
            answer, status = Fault("w:InvalidMessage", "not XML: %s" % error).xml(message_id), 400
        except Exception as error:  # a bug of the double: a fault, not a dropped connection
            self.log_message("internal error: %r", error)
            answer, status = Fault("w:InternalError", "internal error: %r" % error).xml(message_id), 500
        if ARGS.record:
            with RECORD_LOCK, open(ARGS.record, "a") as f:
                f.write(json.dumps(record) + "\n")
        if encrypted:
            self.reply(status, encrypt(self.ntlm_ctx, answer.encode()), content_type=ENCRYPTED_TYPE)
        else:
            self.reply(status, answer.encode())


BOUNDARY = b"--Encrypted Boundary"
ENCRYPTED_TYPE = 'multipart/encrypted;protocol="application/HTTP-SPNEGO-session-encrypted";boundary="Encrypted Boundary"'


def decrypt(ctx, body):
    """MS-WSMV 2.2.9.1.1: the OriginalContent length, then a 4-byte signature length,
    the signature and the sealed envelope."""
    length = int(re.search(rb"Length=(\d+)", body).group(1))
    marker = b"\tContent-Type: application/octet-stream\r\n"
    payload = body[body.index(marker) + len(marker):]
    if payload.endswith(BOUNDARY + b"--\r\n"):
        payload = payload[: -len(BOUNDARY + b"--\r\n")]
    signature_length = struct.unpack("<I", payload[:4])[0]
    signature = payload[4 : 4 + signature_length]
    message = ctx.unwrap_winrm(signature, payload[4 + signature_length :])
    if len(message) != length:
        raise ValueError("length %d, OriginalContent says %d" % (len(message), length))
    return message


def encrypt(ctx, message):
    wrapped = ctx.wrap_winrm(message)
    return (
        BOUNDARY + b"\r\n\tContent-Type: application/HTTP-SPNEGO-session-encrypted\r\n"
        + b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=%d\r\n" % len(message)
        + BOUNDARY + b"\r\n\tContent-Type: application/octet-stream\r\n"
        + struct.pack("<I", len(wrapped.header)) + wrapped.header + wrapped.data
        + BOUNDARY + b"--\r\n"
    )


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--record")
    parser.add_argument("--port", type=int, default=0)
    ARGS = parser.parse_args()
    # pyspnego's NTLM acceptor reads its users from NTLM_USER_FILE (DOMAIN:USER:PASSWORD).
    domain, _, user = ARGS.user.rpartition("\\")
    users = tempfile.NamedTemporaryFile("w", delete=False, dir=ARGS.root, prefix=".ntlm-users-")
    users.write("%s:%s:%s\n" % (domain, user, ARGS.password))
    users.close()
    os.environ["NTLM_USER_FILE"] = users.name
    server = Server(("127.0.0.1", ARGS.port), Handler)
    Handler.server_tls = bool(ARGS.cert)
    if ARGS.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(ARGS.cert, ARGS.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print("LISTENING %d" % server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
