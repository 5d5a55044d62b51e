#!/usr/bin/env bash
# Installs what the real-server lab needs on Debian/Ubuntu: Postfix, Dovecot
# (SASL auth service for Postfix, IMAP server, LMTP delivery with Sieve),
# OpenSSL, swaks and curl (the quick IMAP client of the checks). Run as root.
#
# Idempotent: when every binary is already present it returns at once without
# touching apt. Package scripts are kept from configuring or starting system
# daemons: the lab runs its own private instances (see start.sh).
set -euo pipefail

packages=(postfix dovecot-core dovecot-imapd dovecot-lmtpd dovecot-sieve openssl swaks curl
	libnet-ssleay-perl libio-socket-inet6-perl)
# dovecot-imapd and -lmtpd add no command of their own: their service
# binaries are checked instead, and Sieve's plugin beside its compiler.
binaries=(/usr/sbin/postfix /usr/sbin/postconf /usr/sbin/dovecot /usr/bin/openssl /usr/bin/swaks
	/usr/bin/curl /usr/lib/dovecot/imap /usr/lib/dovecot/imap-login /usr/lib/dovecot/lmtp
	/usr/bin/sievec)
files=(/usr/lib/dovecot/modules/lib90_sieve_plugin.so)

# swaks runs without its TLS and IPv6 modules (they are only Recommends), so
# they are checked as Perl modules, not as files.
have_everything() {
	local b
	for b in "${binaries[@]}"; do
		[[ -x $b ]] || return 1
	done
	for b in "${files[@]}"; do
		[[ -r $b ]] || return 1
	done
	perl -MNet::SSLeay -MIO::Socket::INET6 -e 1 2>/dev/null
}

if have_everything; then
	echo "lab install: postfix, dovecot (imap, lmtp, sieve), openssl, swaks and curl already present"
	exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
	echo "lab install: must run as root (apt-get)" >&2
	exit 1
fi

start=$(date +%s)
# shellcheck source=../apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/../apt.sh"

# "No configuration" leaves /etc/postfix without a main.cf: the lab brings its own.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt_install "${packages[@]}"

if ! have_everything; then
	echo "lab install: packages installed but a binary or Perl module is still missing" >&2
	exit 1
fi
echo "lab install: done in $(($(date +%s) - start)) s"
