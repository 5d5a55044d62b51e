#!/usr/bin/env bash
# Starts the smtp_exporter real-server lab: a private Postfix (submission
# server) and a private Dovecot, bound to 127.0.0.1 only, with a throwaway CA
# and certificates. Dovecot is Postfix's SASL authentication service, takes
# the lab domain's mail from Postfix over LMTP (a global Sieve script files
# messages carrying LAB_JUNK_HEADER into Junk) and serves the mailboxes over
# IMAP. Needs root (the master processes run as root) and the packages of
# install.sh.
#
#   bash test/lab/start.sh [DIR]      DIR defaults to $LAB_DIR or /tmp/smtp-exporter-lab
#   bash test/lab/stop.sh  [DIR]
#   bash test/lab/restart-dovecot.sh [DIR]   restarts Dovecot alone (same ports and users)
#
# DIR is recreated from scratch (only if it is empty or an earlier lab; the
# lab running there is stopped first). Ports can be moved with the
# LAB_PORT_* variables below set in the environment.
#
# On success DIR/env holds one KEY='value' line per variable (values never
# contain a single quote), readable by `set -a; . DIR/env; set +a` and by the
# Go integration tests (SMTP_EXPORTER_LAB=DIR/env):
#
#   LAB_DIR              the lab directory
#   LAB_HOST             address every service listens on: 127.0.0.1
#   LAB_HOSTNAME         Postfix's myhostname, as in the banner and EHLO reply
#   LAB_BANNER           the full 220 greeting text after the code
#   LAB_PORT_PLAIN       SMTP in clear, AUTH offered without TLS (STARTTLS offered too)   default 12525
#   LAB_PORT_SUBMISSION  submission: STARTTLS required, AUTH only after it                default 12587
#   LAB_PORT_IMPLICIT    implicit TLS (smtps), valid certificate                          default 12465
#   LAB_PORT_EXPIRED     implicit TLS with a certificate that expired on 2020-02-01       default 12466
#   LAB_PORT_IMAP        IMAP offering STARTTLS (Dovecot; from 127.0.0.1 it also takes
#                        LOGIN in clear: a client must insist on STARTTLS)               default 12143
#   LAB_PORT_IMAPS       IMAP over implicit TLS, valid certificate (Dovecot)              default 12993
#   LAB_CA               PEM of the lab CA that signed both server certificates
#   LAB_CERT             PEM of the valid server certificate (SANs localhost, 127.0.0.1, ::1),
#                        served by Postfix and by Dovecot's IMAP
#   LAB_EXPIRED_CERT     PEM of the expired server certificate (same SANs and CA)
#   LAB_DOMAIN           the mail domain served: example.net
#   LAB_USER             SASL and IMAP user: probe@example.net (also a mailbox)
#   LAB_PASSWORD         its password, random per start unless LAB_PASSWORD is set
#   LAB_PASSWORD_FILE    file holding the password and a trailing newline
#   LAB_CANARY           canary mailbox and IMAP user: canary@example.net
#   LAB_CANARY_PASSWORD  its password, random per start unless LAB_CANARY_PASSWORD is set
#   LAB_CANARY_PASSWORD_FILE  file holding the canary's password and a trailing newline
#   LAB_MAILDIR          the canary's Maildir, its INBOX (Maildir++: delivered mail
#                        appears in new/ and moves to cur/ once an IMAP client has seen it)
#   LAB_MAILDIR_JUNK     the canary's Junk folder (SPECIAL-USE \Junk): LAB_MAILDIR/.Junk
#   LAB_PROBE_MAILDIR    probe@example.net's Maildir (its INBOX; it has a .Junk too)
#   LAB_JUNK_HEADER      header line that makes the Sieve script file a message into
#                        Junk: X-Lab-Junk: yes
#   LAB_DISCARD          recipient Postfix accepts (250) and silently discards:
#                        lost@example.net
#   LAB_SIZE_LIMIT       message_size_limit, announced as SIZE               default 10240000
#   LAB_POSTFIX_LOG      Postfix log file
#   LAB_DOVECOT_LOG      Dovecot log file
#   LAB_POSTFIX_PID      PID of Postfix's master process
#   LAB_DOVECOT_PID      PID of Dovecot's master process (changed by restart-dovecot.sh)
#   LAB_PIDS             both PIDs, space separated
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"
lab=${1:-${LAB_DIR:-/tmp/smtp-exporter-lab}}
port_plain=${LAB_PORT_PLAIN:-12525}
port_submission=${LAB_PORT_SUBMISSION:-12587}
port_implicit=${LAB_PORT_IMPLICIT:-12465}
port_expired=${LAB_PORT_EXPIRED:-12466}
port_imap=${LAB_PORT_IMAP:-12143}
port_imaps=${LAB_PORT_IMAPS:-12993}
size_limit=${LAB_SIZE_LIMIT:-10240000}
hostname=mx.example.net
user=probe@example.net
canary=canary@example.net
discard=lost@example.net
junk_header='X-Lab-Junk: yes'
marker=.smtp-exporter-lab
ready_timeout=20

fail() {
	echo "lab start: $*" >&2
	exit 1
}

# Paths and values end up in Postfix and Dovecot configuration, in sed
# replacements and in single-quoted env lines: keep them to a safe alphabet.
[[ $lab == /* ]] || lab=$PWD/$lab
[[ $lab =~ ^/[A-Za-z0-9._/-]+$ ]] || fail "lab directory $lab: use only letters, digits and ._-/"
[[ $lab != / && ${lab%/} != /tmp ]] || fail "refusing lab directory $lab"
lab=${lab%/}
for p in "$port_plain" "$port_submission" "$port_implicit" "$port_expired" "$port_imap" "$port_imaps" "$size_limit"; do
	[[ $p =~ ^[0-9]+$ ]] || fail "not a number: $p"
done
[[ $(id -u) -eq 0 ]] || fail "must run as root (Postfix's master process needs it)"
for b in postfix postconf dovecot openssl swaks sievec; do
	command -v "$b" >/dev/null || fail "$b not found: run bash $here/install.sh first"
done
for b in imap lmtp; do
	[[ -x /usr/lib/dovecot/$b ]] || fail "Dovecot's $b service not found: run bash $here/install.sh first"
done

# Replace an earlier lab, never a directory of someone else's.
if [[ -e $lab ]]; then
	if [[ -e $lab/$marker ]]; then
		bash "$here/stop.sh" "$lab"
		rm -rf "$lab"
	elif [[ -d $lab && -z $(ls -A "$lab") ]]; then
		rmdir "$lab"
	else
		fail "$lab exists and is not a lab directory; remove it or choose another"
	fi
fi

started_at=$(date +%s%N)

# Fail early and clearly when a port is taken (by another lab, say).
port_answers() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
for p in "$port_plain" "$port_submission" "$port_implicit" "$port_expired" "$port_imap" "$port_imaps"; do
	if port_answers "$p"; then
		fail "127.0.0.1:$p is already in use; stop the other lab or set LAB_PORT_* (see the top of $0)"
	fi
done

# Deliveries (Dovecot's LMTP and IMAP processes) work as the developer who
# ran sudo, so that tests run as that user can read the Maildirs; as nobody
# otherwise (never as root).
if [[ ${SUDO_UID:-0} -ne 0 ]]; then
	mail_uid=$SUDO_UID
	mail_gid=${SUDO_GID:-$SUDO_UID}
else
	mail_uid=$(id -u nobody)
	mail_gid=$(id -g nobody)
fi

umask 022
mkdir -p "$lab"
touch "$lab/$marker"
# The queue directory must exist (owned by root); Postfix fills it.
mkdir -p "$lab"/{postfix,queue,log,tls/ca/issued,dovecot/run,dovecot/state,dovecot/sieve}
chmod 0700 "$lab/tls/ca"

render() {
	sed -e "s|@LAB_DIR@|$lab|g" \
		-e "s|@HOSTNAME@|$hostname|g" \
		-e "s|@PORT_PLAIN@|$port_plain|g" \
		-e "s|@PORT_SUBMISSION@|$port_submission|g" \
		-e "s|@PORT_IMPLICIT@|$port_implicit|g" \
		-e "s|@PORT_EXPIRED@|$port_expired|g" \
		-e "s|@PORT_IMAP@|$port_imap|g" \
		-e "s|@PORT_IMAPS@|$port_imaps|g" \
		-e "s|@SIZE_LIMIT@|$size_limit|g" \
		-e "s|@MAIL_UID@|$mail_uid|g" \
		-e "s|@MAIL_GID@|$mail_gid|g" \
		"$here/conf/$1" >"$2"
}

# --- certificates ----------------------------------------------------------
# A CA, a valid server certificate and an expired one, all ECDSA P-256 (fast
# to make). `openssl x509 -days` cannot date a certificate in the past;
# `openssl ca -startdate/-enddate` can.
tls=$lab/tls
render ca.cnf "$tls/ca/ca.cnf"
: >"$tls/ca/index.txt"
echo 1000 >"$tls/ca/serial"
ossl_log=$lab/log/openssl.log
new_key() {
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>>"$ossl_log"
	chmod 0600 "$1"
}
new_key "$tls/ca/ca.key"
openssl req -new -x509 -config "$tls/ca/ca.cnf" -key "$tls/ca/ca.key" \
	-subj "/O=smtp_exporter lab/CN=smtp_exporter lab CA" -days 3650 \
	-extensions ca_ext -out "$tls/ca.pem" 2>>"$ossl_log" || fail "CA certificate: see $ossl_log"
issue() { # name subject openssl-ca-date-options...
	local name=$1 subject=$2
	shift 2
	new_key "$tls/$name.key"
	openssl req -new -config "$tls/ca/ca.cnf" -key "$tls/$name.key" -subj "$subject" \
		-out "$tls/ca/$name.csr" 2>>"$ossl_log" || fail "$name request: see $ossl_log"
	openssl ca -batch -notext -config "$tls/ca/ca.cnf" -extensions server_ext \
		-in "$tls/ca/$name.csr" -out "$tls/$name.pem" "$@" >>"$ossl_log" 2>&1 ||
		fail "$name certificate: see $ossl_log"
}
issue server "/O=smtp_exporter lab/CN=localhost" -days 365
issue expired "/O=smtp_exporter lab expired/CN=localhost" \
	-startdate 20200101000000Z -enddate 20200201000000Z

# --- accounts and mailboxes ------------------------------------------------
password=${LAB_PASSWORD:-$(openssl rand -hex 12)}
[[ $password =~ ^[A-Za-z0-9._@%+=-]+$ ]] || fail "LAB_PASSWORD: use only letters, digits and ._@%+=-"
canary_password=${LAB_CANARY_PASSWORD:-$(openssl rand -hex 12)}
[[ $canary_password =~ ^[A-Za-z0-9._@%+=-]+$ ]] || fail "LAB_CANARY_PASSWORD: use only letters, digits and ._@%+=-"
(
	umask 077
	printf '%s\n' "$password" >"$lab/password"
	printf '%s\n' "$canary_password" >"$lab/canary-password"
	printf '%s:{PLAIN}%s::::::\n' "$user" "$password" "$canary" "$canary_password" >"$lab/dovecot/users"
)
chown root:dovecot "$lab/dovecot/users"
chmod 0640 "$lab/dovecot/users"

render dovecot.conf "$lab/dovecot/dovecot.conf"
render main.cf "$lab/postfix/main.cf"
render master.cf "$lab/postfix/master.cf"
# The recipients that exist (virtual(8)'s paths in the values are unused:
# Dovecot's mail_location decides), and the one whose mail is thrown away.
printf '%s example.net/%s/\n' "$canary" "${canary%@*}" "$user" "${user%@*}" "$discard" "${discard%@*}" \
	>"$lab/postfix/vmailbox"
printf '%s discard:the smtp_exporter lab loses mail for %s\n' "$discard" "$discard" >"$lab/postfix/transport"

# The global Sieve script, compiled now: Dovecot's LMTP runs as the mail user
# and could not write the binary beside it.
cp "$here/conf/junk.sieve" "$lab/dovecot/sieve/junk.sieve"
sievec "$lab/dovecot/sieve/junk.sieve" >"$lab/log/sievec.out" 2>&1 ||
	fail "compiling the Sieve script: $(cat "$lab/log/sievec.out")"

# Maildirs (INBOX and Junk, Maildir++) exist from the start so tests can
# watch new/ before any delivery; Dovecot's homes hold its per-user state.
for box in "${canary%@*}" "${user%@*}"; do
	mkdir -p "$lab/mail/example.net/$box"/{cur,new,tmp} "$lab/mail/example.net/$box/.Junk"/{cur,new,tmp}
	touch "$lab/mail/example.net/$box/.Junk/maildirfolder"
	mkdir -p "$lab/home/example.net/$box"
done
chown -R "$mail_uid:$mail_gid" "$lab/mail" "$lab/home"

# --- Dovecot ---------------------------------------------------------------
show_logs() {
	local f
	for f in "$lab"/log/*.log; do
		[[ -s $f ]] || continue
		echo "----- $f (last 40 lines)" >&2
		tail -n 40 "$f" >&2
	done
}
die_with_logs() {
	echo "lab start: $*" >&2
	show_logs
	bash "$here/stop.sh" "$lab" >&2 || true
	exit 1
}

doveconf -c "$lab/dovecot/dovecot.conf" -n >"$lab/log/doveconf.out" 2>&1 ||
	die_with_logs "Dovecot configuration invalid: $(cat "$lab/log/doveconf.out")"
# Waits for the auth and LMTP sockets and both IMAP ports; switches off the
# per-address penalty for failed logins (see lib.sh).
lab_start_dovecot "$lab" "$port_imap" "$port_imaps" 2>"$lab/log/dovecot-start.out" ||
	die_with_logs "$(cat "$lab/log/dovecot-start.out")"

# --- Postfix ---------------------------------------------------------------
# The first start fills the queue directory and creates data/ with their
# owners (about 2 s of the start-up time). Its integrity check fails without
# a word when maillog_file lies outside maillog_file_prefixes.
postfix -c "$lab/postfix" start >"$lab/log/postfix-start.out" 2>&1 ||
	die_with_logs "postfix start failed: $(cat "$lab/log/postfix-start.out")"

# --- ready? ----------------------------------------------------------------
banner_plain() { # port: prints the greeting line
	local line
	exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
	IFS= read -r -t 2 line <&3 || { exec 3<&-; return 1; }
	printf 'QUIT\r\n' >&3
	exec 3<&-
	printf '%s\n' "${line%$'\r'}"
}
banner_tls() { # port
	swaks --server 127.0.0.1 --port "$1" --tlsc --quit-after CONNECT --timeout 2 2>/dev/null |
		sed -n 's/^<~  \(220 .*\)$/\1/p' | head -n 1
}
pending=("plain:$port_plain" "plain:$port_submission" "tls:$port_implicit" "tls:$port_expired")
deadline=$((SECONDS + ready_timeout))
banner=""
while ((${#pending[@]} > 0)); do
	still=()
	for entry in "${pending[@]}"; do
		kind=${entry%%:*} port=${entry#*:}
		line=$("banner_$kind" "$port" 2>/dev/null || true)
		if [[ $line == "220 "* ]]; then
			banner=${line#220 }
		else
			still+=("$entry")
		fi
	done
	pending=("${still[@]+"${still[@]}"}")
	((${#pending[@]} == 0)) && break
	((SECONDS < deadline)) || die_with_logs "no 220 greeting within ${ready_timeout}s on: ${pending[*]}"
	sleep 0.1
done

postfix_pid=$(tr -d ' \n' <"$lab/queue/pid/master.pid")
dovecot_pid=$(tr -d ' \n' <"$lab/dovecot/run/master.pid")

env_file=$lab/env
{
	printf "LAB_DIR='%s'\n" "$lab"
	printf "LAB_HOST='%s'\n" 127.0.0.1
	printf "LAB_HOSTNAME='%s'\n" "$hostname"
	printf "LAB_BANNER='%s'\n" "$banner"
	printf "LAB_PORT_PLAIN='%s'\n" "$port_plain"
	printf "LAB_PORT_SUBMISSION='%s'\n" "$port_submission"
	printf "LAB_PORT_IMPLICIT='%s'\n" "$port_implicit"
	printf "LAB_PORT_EXPIRED='%s'\n" "$port_expired"
	printf "LAB_PORT_IMAP='%s'\n" "$port_imap"
	printf "LAB_PORT_IMAPS='%s'\n" "$port_imaps"
	printf "LAB_CA='%s'\n" "$tls/ca.pem"
	printf "LAB_CERT='%s'\n" "$tls/server.pem"
	printf "LAB_EXPIRED_CERT='%s'\n" "$tls/expired.pem"
	printf "LAB_DOMAIN='%s'\n" example.net
	printf "LAB_USER='%s'\n" "$user"
	printf "LAB_PASSWORD='%s'\n" "$password"
	printf "LAB_PASSWORD_FILE='%s'\n" "$lab/password"
	printf "LAB_CANARY='%s'\n" "$canary"
	printf "LAB_CANARY_PASSWORD='%s'\n" "$canary_password"
	printf "LAB_CANARY_PASSWORD_FILE='%s'\n" "$lab/canary-password"
	printf "LAB_MAILDIR='%s'\n" "$lab/mail/example.net/${canary%@*}"
	printf "LAB_MAILDIR_JUNK='%s'\n" "$lab/mail/example.net/${canary%@*}/.Junk"
	printf "LAB_PROBE_MAILDIR='%s'\n" "$lab/mail/example.net/${user%@*}"
	printf "LAB_JUNK_HEADER='%s'\n" "$junk_header"
	printf "LAB_DISCARD='%s'\n" "$discard"
	printf "LAB_SIZE_LIMIT='%s'\n" "$size_limit"
	printf "LAB_POSTFIX_LOG='%s'\n" "$lab/log/postfix.log"
	printf "LAB_DOVECOT_LOG='%s'\n" "$lab/log/dovecot.log"
	printf "LAB_POSTFIX_PID='%s'\n" "$postfix_pid"
	printf "LAB_DOVECOT_PID='%s'\n" "$dovecot_pid"
	printf "LAB_PIDS='%s'\n" "$postfix_pid $dovecot_pid"
} >"$env_file.tmp"
chmod 0600 "$env_file.tmp"
# The env file and the password files carry the passwords: readable by the
# developer who ran sudo, nobody else.
if [[ ${SUDO_UID:-0} -ne 0 ]]; then
	chown "$SUDO_UID" "$env_file.tmp" "$lab/password" "$lab/canary-password"
fi
mv "$env_file.tmp" "$env_file"

elapsed_ms=$((($(date +%s%N) - started_at) / 1000000))
echo "lab start: ready in ${elapsed_ms} ms: plain $port_plain, submission $port_submission, implicit $port_implicit, expired $port_expired, imap $port_imap, imaps $port_imaps"
echo "lab start: env file $env_file (export SMTP_EXPORTER_LAB=$env_file)"
