#!/usr/bin/env bash
# Stops the lab started by start.sh: Postfix through `postfix -c DIR stop`,
# Dovecot by the PID it recorded. Safe to run any number of times.
#
#   bash test/lab/stop.sh [DIR]      DIR defaults to $LAB_DIR or /tmp/smtp-exporter-lab
set -euo pipefail

lab=${1:-${LAB_DIR:-/tmp/smtp-exporter-lab}}
lab=${lab%/}

if [[ ! -e $lab/.smtp-exporter-lab ]]; then
	echo "lab stop: no lab in $lab"
	exit 0
fi

# pid_of FILE NAME: the PID recorded in FILE if that process is still alive
# and is NAME (a recycled PID must not be signalled).
pid_of() {
	local pid
	[[ -r $1 ]] || return 1
	pid=$(tr -d ' \n' <"$1")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	[[ -r /proc/$pid/cmdline ]] || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$2" || return 1
	echo "$pid"
}

# wait_gone PID SECONDS: true once the process has exited.
wait_gone() {
	local deadline=$((SECONDS + $2))
	while [[ -e /proc/$1 ]]; do
		((SECONDS < deadline)) || return 1
		sleep 0.05
	done
}

stop_pid() { # pid name
	kill -TERM "$1" 2>/dev/null || return 0
	if ! wait_gone "$1" 10; then
		echo "lab stop: $2 ($1) ignored SIGTERM, killing it" >&2
		kill -KILL "$1" 2>/dev/null || true
		wait_gone "$1" 5 || true
	fi
}

if pid=$(pid_of "$lab/queue/pid/master.pid" master); then
	postfix -c "$lab/postfix" stop >/dev/null 2>&1 || true
	if ! wait_gone "$pid" 10; then
		stop_pid "$pid" "postfix master"
	fi
	echo "lab stop: postfix ($pid) stopped"
fi

if pid=$(pid_of "$lab/dovecot/run/master.pid" dovecot); then
	stop_pid "$pid" dovecot
	echo "lab stop: dovecot ($pid) stopped"
fi
