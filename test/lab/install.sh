#!/usr/bin/env bash
# Installs what the real-server lab needs on Debian/Ubuntu: Postfix, Dovecot
# (as SASL auth service only), OpenSSL and swaks. Run as root.
#
# Idempotent: when every binary is already present it returns at once without
# touching apt. Package scripts are kept from configuring or starting system
# daemons: the lab runs its own private instances (see start.sh).
set -euo pipefail

packages=(postfix dovecot-core openssl swaks libnet-ssleay-perl libio-socket-inet6-perl)
binaries=(/usr/sbin/postfix /usr/sbin/postconf /usr/sbin/dovecot /usr/bin/openssl /usr/bin/swaks)

# swaks runs without its TLS and IPv6 modules (they are only Recommends), so
# they are checked as Perl modules, not as files.
have_everything() {
	local b
	for b in "${binaries[@]}"; do
		[[ -x $b ]] || return 1
	done
	perl -MNet::SSLeay -MIO::Socket::INET6 -e 1 2>/dev/null
}

if have_everything; then
	echo "lab install: postfix, dovecot, openssl and swaks already present"
	exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
	echo "lab install: must run as root (apt-get)" >&2
	exit 1
fi

start=$(date +%s)

# Keep maintainer scripts from starting the system-wide daemons. Only a
# policy-rc.d created here is removed again.
policy=/usr/sbin/policy-rc.d
created_policy=""
if [[ ! -e $policy ]]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy"
	chmod 0755 "$policy"
	created_policy=$policy
fi
cleanup() {
	if [[ -n $created_policy ]]; then
		rm -f "$created_policy"
	fi
}
trap cleanup EXIT

# "No configuration" leaves /etc/postfix without a main.cf: the lab brings its own.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends \
	-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
	"${packages[@]}"

if ! have_everything; then
	echo "lab install: packages installed but a binary or Perl module is still missing" >&2
	exit 1
fi
echo "lab install: done in $(($(date +%s) - start)) s"
