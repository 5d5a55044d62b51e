#!/usr/bin/env bash
# Stops the lab started by start.sh: Postfix through `postfix -c DIR stop`,
# Dovecot (auth, LMTP and IMAP: one master process) by the PID it recorded.
# Safe to run any number of times.
#
#   bash test/lab/stop.sh [DIR]      DIR defaults to $LAB_DIR or /tmp/smtp-exporter-lab
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"

lab=${1:-${LAB_DIR:-/tmp/smtp-exporter-lab}}
lab=${lab%/}

if [[ ! -e $lab/.smtp-exporter-lab ]]; then
	echo "lab stop: no lab in $lab"
	exit 0
fi

if pid=$(lab_pid_of "$lab/queue/pid/master.pid" master); then
	postfix -c "$lab/postfix" stop >/dev/null 2>&1 || true
	if ! lab_wait_gone "$pid" 10; then
		lab_stop_pid "$pid" "postfix master"
	fi
	echo "lab stop: postfix ($pid) stopped"
fi

pid=$(lab_stop_dovecot "$lab")
if [[ -n $pid ]]; then
	echo "lab stop: dovecot ($pid) stopped"
fi
