# shellcheck shell=bash
# Sourced by the install scripts: installs Debian packages without letting
# their maintainer scripts start system-wide daemons (the tests run private
# instances of their own). Needs root.

# apt_install PACKAGE... installs the packages non-interactively.
apt_install() {
	if [[ $(id -u) -ne 0 ]]; then
		echo "install: must run as root (apt-get)" >&2
		return 1
	fi
	# A policy-rc.d that exits 101 keeps package scripts from starting
	# daemons; only one created here is removed again.
	local policy=/usr/sbin/policy-rc.d created=""
	if [[ ! -e $policy ]]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod 0755 "$policy"
		created=$policy
	fi
	local status=0
	DEBIAN_FRONTEND=noninteractive apt-get update -q &&
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" ||
		status=$?
	[[ -z $created ]] || rm -f "$created"
	return "$status"
}
