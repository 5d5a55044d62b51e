#!/usr/bin/env bash
# Restarts the Dovecot of a running lab (auth, LMTP and IMAP), as an
# operator's restart would: IMAP sessions are cut, the ports, certificate,
# users and passwords stay the same, Postfix keeps running (deliveries that
# meet the gap are deferred and retried within seconds). Needs root.
#
#   bash test/lab/restart-dovecot.sh [DIR]      DIR defaults to $LAB_DIR or /tmp/smtp-exporter-lab
#
# Returns once Dovecot serves again, with LAB_DOVECOT_PID and LAB_PIDS in
# DIR/env replaced by one rename (a reader sees the old file or the new one).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"

lab=${1:-${LAB_DIR:-/tmp/smtp-exporter-lab}}
lab=${lab%/}
env_file=$lab/env

fail() {
	echo "lab restart-dovecot: $*" >&2
	exit 1
}

[[ -e $lab/.smtp-exporter-lab && -r $env_file ]] || fail "no lab in $lab"
[[ $(id -u) -eq 0 ]] || fail "must run as root (Dovecot's master process needs it)"

# env_value KEY: the value of KEY='value' in the env file.
env_value() {
	sed -n "s/^$1='\(.*\)'\$/\1/p" "$env_file"
}
port_imap=$(env_value LAB_PORT_IMAP)
port_imaps=$(env_value LAB_PORT_IMAPS)
postfix_pid=$(env_value LAB_POSTFIX_PID)
[[ $port_imap =~ ^[0-9]+$ && $port_imaps =~ ^[0-9]+$ ]] ||
	fail "$env_file has no LAB_PORT_IMAP or LAB_PORT_IMAPS: a lab started before IMAP existed; restart it with start.sh"

started_at=$(date +%s%N)
old=$(lab_stop_dovecot "$lab")
if ! lab_start_dovecot "$lab" "$port_imap" "$port_imaps"; then
	tail -n 40 "$lab/log/dovecot.log" >&2 || true
	fail "Dovecot did not come back (log above)"
fi
new=$(tr -d ' \n' <"$lab/dovecot/run/master.pid")

sed -e "s/^LAB_DOVECOT_PID=.*/LAB_DOVECOT_PID='$new'/" \
	-e "s/^LAB_PIDS=.*/LAB_PIDS='$postfix_pid $new'/" "$env_file" >"$env_file.tmp"
chmod --reference="$env_file" "$env_file.tmp"
chown --reference="$env_file" "$env_file.tmp"
mv "$env_file.tmp" "$env_file"

elapsed_ms=$((($(date +%s%N) - started_at) / 1000000))
echo "lab restart-dovecot: dovecot ${old:-(not running)} -> $new, serving again in ${elapsed_ms} ms"
