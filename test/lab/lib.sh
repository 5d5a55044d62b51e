# shellcheck shell=bash
# Sourced by start.sh, stop.sh and restart-dovecot.sh: finding, stopping and
# starting the lab's processes.

# lab_wait_for SECONDS COMMAND...: runs COMMAND until it succeeds; false if
# it still fails after SECONDS.
lab_wait_for() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@"; do
		((SECONDS < deadline)) || return 1
		sleep 0.05
	done
}

# lab_pid_of FILE NAME: the PID recorded in FILE if that process is still
# alive and is NAME (a recycled PID must not be signalled).
lab_pid_of() {
	local pid
	[[ -r $1 ]] || return 1
	pid=$(tr -d ' \n' <"$1")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	[[ -r /proc/$pid/cmdline ]] || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$2" || return 1
	echo "$pid"
}

# lab_wait_gone PID SECONDS: true once the process has exited.
lab_wait_gone() {
	local deadline=$((SECONDS + $2))
	while [[ -e /proc/$1 ]]; do
		((SECONDS < deadline)) || return 1
		sleep 0.05
	done
}

# lab_stop_pid PID NAME: SIGTERM, then SIGKILL after 10 s.
lab_stop_pid() {
	kill -TERM "$1" 2>/dev/null || return 0
	if ! lab_wait_gone "$1" 10; then
		echo "lab: $2 ($1) ignored SIGTERM, killing it" >&2
		kill -KILL "$1" 2>/dev/null || true
		lab_wait_gone "$1" 5 || true
	fi
}

# lab_stop_dovecot LAB: stops the lab's Dovecot (its master takes the auth,
# LMTP and IMAP processes with it); prints its PID if one ran.
lab_stop_dovecot() {
	local pid
	pid=$(lab_pid_of "$1/dovecot/run/master.pid" dovecot) || return 0
	lab_stop_pid "$pid" dovecot
	echo "$pid"
}

# lab_imap_greeting PORT: true when 127.0.0.1:PORT greets in clear with
# "* OK" and offers STARTTLS.
lab_imap_greeting() {
	local line
	exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
	IFS= read -r -t 2 line <&3 || { exec 3<&-; return 1; }
	printf 'a LOGOUT\r\n' >&3
	exec 3<&-
	[[ $line == "* OK "* && $line == *STARTTLS* ]]
}

# lab_imaps_greeting PORT CA: true when 127.0.0.1:PORT completes a TLS
# handshake with a certificate CA verifies and then greets with "* OK".
lab_imaps_greeting() {
	local line
	line=$(printf 'a LOGOUT\r\n' |
		timeout 5 openssl s_client -connect "127.0.0.1:$1" -CAfile "$2" -verify_return_error \
			-verify_ip 127.0.0.1 -quiet 2>/dev/null | head -n 1)
	[[ $line == "* OK "* ]]
}

# lab_start_dovecot LAB PORT_IMAP PORT_IMAPS: starts the lab's Dovecot from
# LAB/dovecot/dovecot.conf and waits until Postfix's auth and LMTP sockets
# exist and both IMAP ports greet. Prints why on stderr and returns 1 if not.
lab_start_dovecot() {
	local lab=$1 imap=$2 imaps=$3
	if ! dovecot -c "$lab/dovecot/dovecot.conf" >>"$lab/log/dovecot.log" 2>&1; then
		echo "Dovecot did not start" >&2
		return 1
	fi
	if ! lab_wait_for 10 test -S "$lab/dovecot/auth-postfix"; then
		echo "Dovecot's auth socket $lab/dovecot/auth-postfix did not appear" >&2
		return 1
	fi
	# Dovecot delays every authentication from an address that recently
	# failed (2, 4, 8, then 15 s, through anvil), and Postfix gives up on its
	# auth server after 10 s with "454 4.7.0 Temporary authentication
	# failure". Tests that send wrong passwords (SMTP AUTH or IMAP LOGIN) from
	# 127.0.0.1 on purpose would slow down and then fail at random. Dovecot
	# 2.3 has no setting for it; the auth process turns the penalty off when
	# it finds no anvil-auth-penalty socket at start, and it starts only at
	# the first authentication (or the first IMAP connection), after this
	# point. LAB_AUTH_PENALTY=yes keeps the production behaviour.
	if [[ ${LAB_AUTH_PENALTY:-no} != yes ]]; then
		rm -f "$lab/dovecot/run/anvil-auth-penalty"
	fi
	if ! lab_wait_for 10 test -S "$lab/dovecot/lmtp"; then
		echo "Dovecot's LMTP socket $lab/dovecot/lmtp did not appear" >&2
		return 1
	fi
	if ! lab_wait_for 10 lab_imap_greeting "$imap"; then
		echo "no IMAP greeting with STARTTLS on 127.0.0.1:$imap within 10 s" >&2
		return 1
	fi
	if ! lab_wait_for 10 lab_imaps_greeting "$imaps" "$lab/tls/ca.pem"; then
		echo "no IMAP greeting over TLS on 127.0.0.1:$imaps within 10 s" >&2
		return 1
	fi
}
