#!/bin/sh
# Installs a Stella agent on this host from the control plane, and enrols it.
#
#   curl -fsSk --pinnedpubkey sha256//KEY https://HOST:PORT/install/agent.sh \
#     | sudo sh -s -- --server https://HOST:PORT --token stj1.… --pin sha256//KEY
#
# `stella agent token create --install` prints that command. The script downloads
# stella-agent-linux-$(uname -m) and its .sha256 from the server (pinning the server's
# TLS key when --pin is given) and checks the SHA-256 before it changes anything. It
# then creates the user stella-agent, installs /usr/local/bin/stella-agent and the unit
# stella-agent.service, starts it with the join token in /etc/stella/agent.env, waits
# until the agent has enrolled, and takes the token out of that file again.
#
# Running it again leaves one working agent: an enrolled agent is not enrolled again,
# and the binary is replaced only when it differs.
#
#   sh install.sh --uninstall [--purge]
#
# stops and removes the unit, the binary and the env file; the data dir (the agent's
# identity) and the user stay unless --purge is given.
set -eu

BIN=/usr/local/bin/stella-agent
UNIT=/etc/systemd/system/stella-agent.service
ENV_DIR=/etc/stella
ENV_FILE=$ENV_DIR/agent.env
DATA_DIR=/var/lib/stella-agent
AGENT_USER=stella-agent
ENROL_TIMEOUT_SECONDS=${STELLA_ENROL_TIMEOUT_SECONDS:-90}

SERVER=
TOKEN=
PIN=
NAME=
LABELS=
UNINSTALL=
PURGE=
TMP=

say() { printf 'stella-agent install: %s\n' "$*" >&2; }
die() {
	printf 'stella-agent install: error: %s\n' "$*" >&2
	exit 1
}
usage() {
	cat >&2 <<'EOF'
usage: install.sh --server URL --token TOKEN [--pin sha256//KEY] [--name NAME] [--label k=v]...
       install.sh --uninstall [--purge]
EOF
	exit 2
}

cleanup() {
	if [ -n "$TMP" ]; then rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

while [ $# -gt 0 ]; do
	case $1 in
	--server) [ $# -ge 2 ] || usage; SERVER=$2; shift 2 ;;
	--token) [ $# -ge 2 ] || usage; TOKEN=$2; shift 2 ;;
	--pin) [ $# -ge 2 ] || usage; PIN=$2; shift 2 ;;
	--name) [ $# -ge 2 ] || usage; NAME=$2; shift 2 ;;
	--label) [ $# -ge 2 ] || usage; LABELS="$LABELS $2"; shift 2 ;;
	--uninstall) UNINSTALL=1; shift ;;
	--purge) PURGE=1; shift ;;
	-h | --help) usage ;;
	*) say "unknown option $1"; usage ;;
	esac
done

# Values end up in a systemd unit line: only characters that need no quoting there.
# One line, all of it matching the extended regular expression $2.
matches() {
	[ "$(printf '%s\n' "$1" | wc -l)" -eq 1 ] && printf '%s\n' "$1" | grep -Eq "^($2)\$"
}

has_systemd() { [ -d /run/systemd/system ]; }

uninstall() {
	if has_systemd; then
		systemctl disable --now stella-agent.service >/dev/null 2>&1 || true
	fi
	rm -f "$UNIT" "$BIN" "$ENV_FILE"
	if has_systemd; then systemctl daemon-reload; fi
	if [ -n "$PURGE" ]; then
		rm -rf "$DATA_DIR"
		if getent passwd "$AGENT_USER" >/dev/null; then userdel "$AGENT_USER" >/dev/null 2>&1 || true; fi
		say "removed the agent, its data dir $DATA_DIR and the user $AGENT_USER"
	else
		say "removed the agent; its identity stays in $DATA_DIR (remove it with --uninstall --purge)"
	fi
	say "revoke it on the control plane: stella agent revoke <name>"
}

if [ "$(id -u)" -ne 0 ]; then die "run as root (pipe into sudo sh)"; fi

if [ -n "$UNINSTALL" ]; then
	uninstall
	exit 0
fi

[ -n "$SERVER" ] || usage
matches "$SERVER" 'https?://[A-Za-z0-9._:-]+|https?://\[[0-9A-Fa-f:.]+\](:[0-9]+)?' ||
	die "--server must be http(s)://host[:port], not '$SERVER'"
if [ -n "$PIN" ]; then
	matches "$PIN" 'sha256//[A-Za-z0-9+/=]+' || die "--pin must be sha256//<base64>"
	case $SERVER in https://*) ;; *) die "--pin needs an https:// server" ;; esac
fi
if [ -n "$TOKEN" ]; then
	matches "$TOKEN" '[A-Za-z0-9._~+/=-]+' || die "the join token has characters a token does not have"
fi
if [ -n "$NAME" ]; then
	matches "$NAME" '[a-z0-9][a-z0-9._-]{0,62}' || die "--name must be lowercase letters, digits, '.', '_' or '-'"
fi
for label in $LABELS; do
	matches "$label" '[A-Za-z0-9._/-]+=[A-Za-z0-9._:/@+-]*' || die "--label '$label' is not key=value of plain characters"
done
command -v curl >/dev/null || die "curl is needed"
command -v sha256sum >/dev/null || die "sha256sum is needed"

# Everything is fetched and checked before anything on the host changes.
# fetch OUT URL
fetch() {
	out=$1 url=$2
	if [ -n "$PIN" ]; then
		# -k: no CA or host name check; the pinned key replaces both, and curl checks
		# the pin even so.
		set -- -k --pinnedpubkey "$PIN"
	else
		set --
	fi
	status=0
	curl -fsS --proto '=https,http' --retry 2 "$@" -o "$out" "$url" || status=$?
	case $status in
	0) ;;
	90) die "the server's TLS key does not match --pin $PIN; nothing was installed" ;;
	*) die "cannot download $url (curl exit status $status); nothing was installed" ;;
	esac
}

ARCH=$(uname -m)
FILE=stella-agent-linux-$ARCH
TMP=$(mktemp -d)
say "downloading $FILE from $SERVER"
fetch "$TMP/$FILE.sha256" "$SERVER/downloads/$FILE.sha256"
fetch "$TMP/$FILE" "$SERVER/downloads/$FILE"
EXPECTED=$(cut -d ' ' -f 1 "$TMP/$FILE.sha256")
ACTUAL=$(sha256sum "$TMP/$FILE" | cut -d ' ' -f 1)
matches "$EXPECTED" '[0-9a-f]{64}' || die "the server's $FILE.sha256 holds no SHA-256; nothing was installed"
if [ "$EXPECTED" != "$ACTUAL" ]; then
	die "$FILE does not have the SHA-256 the server lists ($ACTUAL, expected $EXPECTED); nothing was installed"
fi
say "sha256 $ACTUAL checked"

# The binary: replaced atomically (a temp file beside it, then a rename), and only
# when it differs.
CHANGED=
if [ -f "$BIN" ] && [ "$(sha256sum "$BIN" | cut -d ' ' -f 1)" = "$ACTUAL" ]; then
	say "$BIN is already this version"
else
	install -d -m 0755 "$(dirname "$BIN")"
	install -m 0755 "$TMP/$FILE" "$BIN.new"
	mv -f "$BIN.new" "$BIN"
	CHANGED=1
	say "installed $BIN"
fi

EXEC="$BIN --server $SERVER --data-dir $DATA_DIR"
if [ -n "$NAME" ]; then EXEC="$EXEC --name $NAME"; fi
for label in $LABELS; do EXEC="$EXEC --label $label"; done

if ! has_systemd; then
	say "this host does not run systemd: the agent binary is installed, but no service is"
	say "start it under your service manager as a user that owns $DATA_DIR (mode 0700):"
	if [ -n "$TOKEN" ]; then
		printf '  %s --join-token %s\n' "$EXEC" "$TOKEN" >&2
	else
		printf '  %s\n' "$EXEC" >&2
	fi
	exit 3
fi

if ! getent passwd "$AGENT_USER" >/dev/null; then
	useradd --system --home-dir "$DATA_DIR" --no-create-home --shell /usr/sbin/nologin "$AGENT_USER"
	say "created the user $AGENT_USER"
fi
GROUPS_LINE=
if getent group docker >/dev/null; then
	usermod -aG docker "$AGENT_USER"
	GROUPS_LINE="SupplementaryGroups=docker"
fi
install -d -m 0700 -o "$AGENT_USER" -g "$AGENT_USER" "$DATA_DIR"

# The unit is that of installers/systemd/stella-agent.service, running stella-agent.
cat >"$TMP/unit" <<EOF
# Written by the Stella agent install script (/install/agent.sh of the control plane).
[Unit]
Description=Stella deployment agent
After=network-online.target docker.service
Wants=network-online.target

[Service]
Type=simple
User=$AGENT_USER
Group=$AGENT_USER
$GROUPS_LINE
# The join token, for the first start only; the install script removes it.
EnvironmentFile=-$ENV_FILE
ExecStart=$EXEC
Restart=always
RestartSec=2s
# Exit status 3: the control plane revoked this agent; restarting cannot help.
RestartPreventExitStatus=3
StateDirectory=stella-agent
StateDirectoryMode=0700

NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
CapabilityBoundingSet=
AmbientCapabilities=
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
SystemCallArchitectures=native
SystemCallFilter=@system-service
UMask=0077
# Sticker files for Compose and SSH targets live here.
ReadWritePaths=-/var/lib/stella

[Install]
WantedBy=multi-user.target
EOF
if ! cmp -s "$TMP/unit" "$UNIT"; then
	install -m 0644 "$TMP/unit" "$UNIT.new"
	mv -f "$UNIT.new" "$UNIT"
	CHANGED=1
	say "installed $UNIT"
fi

enrolled() { [ -f "$DATA_DIR/agent.json" ] && [ -f "$DATA_DIR/agent.pem" ]; }

# Takes the join token out of the env file, keeping any other line.
forget_token() {
	[ -f "$ENV_FILE" ] || return 0
	grep -v '^STELLA_JOIN_TOKEN=' "$ENV_FILE" >"$TMP/env" || true
	if [ -s "$TMP/env" ]; then
		install -m 0600 "$TMP/env" "$ENV_FILE"
	else
		rm -f "$ENV_FILE"
	fi
}

if enrolled; then
	say "the agent is enrolled already; the join token is not used"
	forget_token
else
	[ -n "$TOKEN" ] || die "the agent is not enrolled yet: give --token"
	install -d -m 0755 "$ENV_DIR"
	forget_token
	umask 077
	printf 'STELLA_JOIN_TOKEN=%s\n' "$TOKEN" >>"$ENV_FILE"
	chmod 0600 "$ENV_FILE"
	CHANGED=1
fi

systemctl daemon-reload
systemctl enable stella-agent.service >/dev/null 2>&1
if [ -n "$CHANGED" ]; then
	systemctl restart stella-agent.service
else
	systemctl start stella-agent.service
fi

waited=0
while ! enrolled; do
	if [ "$waited" -ge "$ENROL_TIMEOUT_SECONDS" ]; then
		journalctl -u stella-agent.service -n 5 --no-pager >&2 || true
		die "the agent did not enrol within ${ENROL_TIMEOUT_SECONDS}s; see journalctl -u stella-agent (the join token stays in $ENV_FILE for its next try)"
	fi
	sleep 1
	waited=$((waited + 1))
done
forget_token
say "the agent is enrolled and running: systemctl status stella-agent"
