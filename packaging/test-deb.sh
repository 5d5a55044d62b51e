#!/usr/bin/env bash
# Tests the Debian package on this machine: installs it with dpkg -i, runs
# the exporter the way its systemd unit does (systemd need not run here: the
# unit's ExecStart, with the words of its EnvironmentFile, under its User and
# Group, with no new privileges and no capabilities), probes the lab through
# it, reloads it with the unit's ExecReload, installs the package over itself
# as an upgrade does, stops it, then removes and purges the package, and
# checks what each step leaves.
#
#   bash packaging/test-deb.sh [DEB]     DEB defaults to a fresh packaging/build-deb.sh
#
# Root on Debian; installs systemd's package for systemd-analyze if it is
# missing (nothing starts systemd). The lab of test/lab (SMTP_EXPORTER_LAB,
# as .ci/run exports it) is needed for the probes; without it they are
# skipped, except in CI.
# Only loopback is contacted: the test configuration names the lab's ports on
# 127.0.0.1, never the shipped configuration's example.net hosts.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

pkg=smtp-exporter
unit_file=/usr/lib/systemd/system/smtp_exporter.service
etc=/etc/smtp_exporter
default_file=/etc/default/smtp_exporter

fail() {
	echo "test-deb: FAIL: $*" >&2
	exit 1
}
ok() {
	echo "test-deb: ok: $*"
}

[[ $(id -u) -eq 0 ]] || fail "must run as root (dpkg -i)"
if ! command -v systemd-analyze >/dev/null; then
	# Only for `systemd-analyze verify` and `security`: nothing starts it.
	# shellcheck source=../test/apt.sh
	source test/apt.sh
	apt_install systemd </dev/null >&2 || fail "could not install systemd (for systemd-analyze)"
fi
for b in dpkg dpkg-query setpriv timeout systemd-analyze; do
	command -v "$b" >/dev/null || fail "$b not found"
done
# Never take over an installation or an account that is not this test's.
if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q ' installed$'; then
	fail "$pkg is already installed here: this test installs and purges it"
fi
if getent passwd smtp_exporter >/dev/null || getent group smtp_exporter >/dev/null; then
	fail "a user or group smtp_exporter exists already: the purge would remove it"
fi

lab=false
if [[ -n ${SMTP_EXPORTER_LAB:-} && -r ${SMTP_EXPORTER_LAB:-} ]]; then
	# shellcheck disable=SC1090
	. "$SMTP_EXPORTER_LAB"
	lab=true
elif [[ ${CI:-} == true ]]; then
	fail "CI: the lab is required (SMTP_EXPORTER_LAB)"
else
	echo "test-deb: no lab (SMTP_EXPORTER_LAB): the probes are skipped" >&2
fi

deb=${1:-}
if [[ -z $deb ]]; then
	deb=$(bash packaging/build-deb.sh)
fi
[[ -r $deb ]] || fail "no package $deb"
version=$(tr -d ' \t\n' <VERSION)

work=$(mktemp -d /tmp/smtp-exporter-test-deb.XXXXXX)
main_pid=""
installed=false
cleanup() {
	if [[ -n $main_pid ]] && kill -0 "$main_pid" 2>/dev/null; then
		kill "$main_pid" 2>/dev/null || true
		wait "$main_pid" 2>/dev/null || true
	fi
	if $installed; then
		dpkg --purge "$pkg" >/dev/null 2>&1 || true
	fi
	rm -f "$etc/test.yml" "$etc/test.pass" "$etc/test-ca.pem"
	rmdir "$etc" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

# http_get PORT PATH: the body of a 200 response from 127.0.0.1:PORT, with
# nothing but bash (no curl on a fresh machine).
http_get() {
	local response status
	exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
	printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1:%s\r\n\r\n' "$2" "$1" >&3
	response=$(timeout 20 cat <&3) || true
	exec 3<&-
	status=${response%%$'\r'*}
	if [[ $status != "HTTP/1."?" 200 "* ]]; then
		echo "GET $2: ${status:-no response}" >&2
		return 1
	fi
	printf '%s\n' "${response#*$'\r\n\r\n'}" | tr -d '\r'
}

# metric TEXT NAME: the value of the one series of NAME in an exposition.
metric() {
	awk -v name="$2" '$1 == name || index($1, name "{") == 1 { print $NF; exit }' <<<"$1"
}

# free_port: a loopback TCP port nothing listens on.
free_port() {
	local port
	for ((port = 29465 + RANDOM % 2000; ; port++)); do
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			echo "$port"
			return
		fi
	done
}

# unit_value KEY: the last KEY= setting of the unit's [Service] section.
unit_value() {
	awk -v key="$1" '
		/^\[/ { service = ($0 == "[Service]") }
		service && index($0, key "=") == 1 { value = substr($0, length(key) + 2) }
		END { print value }' "$unit_file"
}

echo "test-deb: package $deb"
dpkg-deb --info "$deb" | sed -n 's/^ \(Package\|Version\|Architecture\): /  \1: /p'

# --- install ----------------------------------------------------------------
dpkg -i "$deb"
installed=true
uid=$(id -u smtp_exporter) || fail "no user smtp_exporter after install"
((uid < 1000)) || fail "smtp_exporter has uid $uid: not a system user"
[[ $(getent passwd smtp_exporter | cut -d: -f7) == */nologin || $(getent passwd smtp_exporter | cut -d: -f7) == /bin/false ]] ||
	fail "smtp_exporter can log in: $(getent passwd smtp_exporter)"
[[ $(stat -c '%U:%G %a' "$etc") == "root:smtp_exporter 750" ]] || fail "$etc is $(stat -c '%U:%G %a' "$etc")"
[[ $(stat -c '%U:%G %a' "$etc/smtp_exporter.yml") == "root:smtp_exporter 640" ]] ||
	fail "$etc/smtp_exporter.yml is $(stat -c '%U:%G %a' "$etc/smtp_exporter.yml")"
conffiles=$(dpkg-query -W -f='${Conffiles}' "$pkg")
for f in "$etc/smtp_exporter.yml" "$default_file"; do
	grep -q " $f " <<<"$conffiles" || fail "$f is not a conffile: $conffiles"
done
[[ -r $unit_file ]] || fail "no $unit_file"
/usr/bin/smtp_exporter --config.file="$etc/smtp_exporter.yml" --config.check >/dev/null ||
	fail "the shipped configuration does not validate"
# systemd's own reading of the unit (systemd need not run): its syntax, and
# an exposure level kept below 2.0 of 10 ("OK").
systemd-analyze verify "$unit_file" || fail "systemd-analyze verify $unit_file"
exposure=$(systemd-analyze security --offline=yes --threshold=20 "$unit_file" 2>&1) ||
	fail "systemd-analyze security: the unit's exposure rose above 2.0: $(tail -n 1 <<<"$exposure")"
echo "  systemd-analyze security: $(tail -n 1 <<<"$exposure")"
ok "installed: system user smtp_exporter (uid $uid), conffiles, $etc readable by its group only"

# --- configure for the lab, as an administrator would ------------------------
port=$(free_port)
if $lab; then
	(
		umask 027
		install -m 0640 "$LAB_PASSWORD_FILE" "$etc/test.pass"
		install -m 0640 "$LAB_CA" "$etc/test-ca.pem"
		cat >"$etc/test.yml" <<-EOF
			# The lab of test/lab, for packaging/test-deb.sh.
			modules:
			  lab_banner:
			    timeout: 5s
			    smtp:
			      tls: none
			      port: $LAB_PORT_PLAIN
			  lab_submission:
			    timeout: 5s
			    smtp:
			      tls: starttls
			      port: $LAB_PORT_SUBMISSION
			      tls_config:
			        ca_file: $etc/test-ca.pem
			      auth:
			        mechanism: auto
			        username: $LAB_USER
			        password_file: $etc/test.pass
			      allowed_targets:
			        - $LAB_HOST:$LAB_PORT_SUBMISSION
		EOF
	)
	chgrp smtp_exporter "$etc/test.pass" "$etc/test-ca.pem" "$etc/test.yml"
else
	# Nothing is probed then: the configuration only has to load.
	printf 'modules:\n  unused:\n    smtp:\n      tls: none\n' >"$etc/test.yml"
	chgrp smtp_exporter "$etc/test.yml"
	chmod 0640 "$etc/test.yml"
fi
config=$etc/test.yml
sed -i "s|^ARGS=.*|ARGS=\"--config.file=$config --web.listen-address=127.0.0.1:$port\"|" "$default_file"
grep -q "^ARGS=\"--config.file=$config " "$default_file" || fail "could not set ARGS in $default_file"

# --- start it as the unit does ----------------------------------------------
user=$(unit_value User)
group=$(unit_value Group)
env_file=$(unit_value EnvironmentFile)
exec_start=$(unit_value ExecStart)
exec_reload=$(unit_value ExecReload)
[[ -n $user && -n $group && -n $exec_start && -n $exec_reload ]] || fail "$unit_file lacks User, Group, ExecStart or ExecReload"
[[ $(unit_value NoNewPrivileges) == yes && -z $(unit_value CapabilityBoundingSet) ]] ||
	fail "$unit_file: expected NoNewPrivileges=yes and an empty CapabilityBoundingSet"

# The variables of the EnvironmentFile ("-": may be missing), as systemd
# reads simple KEY="value" lines.
declare -A unit_env=()
env_file=${env_file#-}
if [[ -r $env_file ]]; then
	while IFS= read -r name; do
		# shellcheck disable=SC1090
		unit_env[$name]=$(set -a && . "$env_file" && printf '%s' "${!name}")
	done < <(sed -n 's/^[[:space:]]*\([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p' "$env_file")
fi

# expand_command LINE: sets cmd to the argv systemd makes of an Exec line:
# $NAME becomes the words of its value, ${NAME} its whole value.
expand_command() {
	local line=$1 word name
	local -a words values
	cmd=()
	line=${line#[-@:+!]}
	[[ $line != *[\"\'\\]* ]] || fail "quoting in '$line' is beyond this test's reading of Exec lines"
	read -ra words <<<"$line"
	for word in "${words[@]}"; do
		if [[ $word =~ ^\$([A-Za-z_][A-Za-z0-9_]*)$ ]]; then
			name=${BASH_REMATCH[1]}
			if [[ $name == MAINPID ]]; then
				cmd+=("$main_pid")
			else
				read -ra values <<<"${unit_env[$name]:-}"
				cmd+=("${values[@]}")
			fi
		elif [[ $word =~ ^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$ ]]; then
			cmd+=("${unit_env[${BASH_REMATCH[1]}]:-}")
		elif [[ $word == *'$'* ]]; then
			fail "'$word' in '$line': a variable inside a word is beyond this test"
		else
			cmd+=("$word")
		fi
	done
}

expand_command "$exec_start"
argv=("${cmd[@]}")
env_args=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin HOME=/ USER="$user" LOGNAME="$user")
for name in "${!unit_env[@]}"; do
	env_args+=("$name=${unit_env[$name]}")
done
echo "test-deb: running as $user:$group: ${argv[*]}"
log=$work/exporter.log
(
	cd /
	exec env -i "${env_args[@]}" setpriv --reuid="$user" --regid="$group" --init-groups \
		--no-new-privs --inh-caps=-all --bounding-set=-all -- "${argv[@]}"
) >"$log" 2>&1 &
main_pid=$!

for ((i = 0; ; i++)); do
	if http_get "$port" /-/healthy >/dev/null 2>&1; then
		break
	fi
	if ! kill -0 "$main_pid" 2>/dev/null || ((i >= 100)); then
		cat "$log" >&2
		fail "the exporter did not become healthy on 127.0.0.1:$port"
	fi
	sleep 0.1
done
status=$(cat "/proc/$main_pid/status")
[[ $(awk '/^Uid:/ { print $2 }' <<<"$status") == "$uid" ]] || fail "the exporter does not run as smtp_exporter"
[[ $(awk '/^NoNewPrivs:/ { print $2 }' <<<"$status") == 1 ]] || fail "the exporter may gain privileges"
[[ $(awk '/^CapBnd:/ { print $2 }' <<<"$status") == 0000000000000000 ]] || fail "the exporter keeps capabilities"
ok "running as smtp_exporter (pid $main_pid) on 127.0.0.1:$port, no new privileges, no capabilities"

# --- its version ------------------------------------------------------------
metrics=$(http_get "$port" /metrics) || fail "GET /metrics"
build_info=$(grep '^smtp_exporter_build_info{' <<<"$metrics") || fail "no smtp_exporter_build_info"
echo "  $build_info"
[[ $build_info == *"version=\"$version\""* ]] || fail "smtp_exporter_build_info does not carry version $version"
[[ $build_info =~ revision=\"[0-9a-f]{40}(-modified)?\" ]] || fail "smtp_exporter_build_info carries no revision"
/usr/bin/smtp_exporter --version 2>&1 | grep -q "^smtp_exporter, version $version " || fail "--version does not say $version"
ok "smtp_exporter_build_info and --version say $version"

# --- probes of the lab ------------------------------------------------------
if $lab; then
	for probe in "lab_banner $LAB_PORT_PLAIN" "lab_submission $LAB_PORT_SUBMISSION"; do
		read -r module lab_port <<<"$probe"
		result=$(http_get "$port" "/probe?module=$module&target=$LAB_HOST:$lab_port") || fail "GET /probe for $module"
		success=$(metric "$result" probe_success)
		if [[ $success != 1 ]]; then
			grep -E '^probe_(success|smtp_failure_info)' <<<"$result" >&2 || true
			fail "$module: probe_success ${success:-missing}"
		fi
		ok "$module on $LAB_HOST:$lab_port: probe_success 1"
	done
	[[ $(metric "$result" probe_smtp_auth_success) == 1 ]] ||
		fail "lab_submission: no login (is $etc/test.pass readable by the service's group?)"
	ok "lab_submission logged in with the password file readable by group smtp_exporter only"
fi

# --- reload as the unit does -------------------------------------------------
# A module added to the file is in use after ExecReload (never probed).
printf '  reloaded_module:\n    smtp:\n      tls: none\n' >>"$etc/test.yml"
expand_command "$exec_reload"
reload=("${cmd[@]}")
"${reload[@]}" || fail "ExecReload: ${reload[*]}"
for ((i = 0; ; i++)); do
	in_use=$(http_get "$port" /config) || fail "GET /config"
	grep -q '^ *reloaded_module:' <<<"$in_use" && break
	((i < 50)) || fail "ExecReload (${reload[*]}) did not reload the configuration"
	sleep 0.1
done
metrics=$(http_get "$port" /metrics) || fail "GET /metrics"
[[ $(metric "$metrics" smtp_exporter_config_last_reload_successful) == 1 ]] || fail "the reload failed"
kill -0 "$main_pid" 2>/dev/null || fail "the exporter exited on ExecReload"
ok "ExecReload (${reload[*]}) reloaded the configuration"

# --- upgrade (the same package again): edited conffiles and the user stay ----
dpkg -i "$deb" </dev/null
grep -q "^ARGS=\"--config.file=$config " "$default_file" || fail "the upgrade replaced the edited $default_file"
[[ $(id -u smtp_exporter) == "$uid" ]] || fail "the upgrade changed the user"
[[ $(stat -c '%U:%G %a' "$etc/smtp_exporter.yml") == "root:smtp_exporter 640" ]] ||
	fail "after the upgrade $etc/smtp_exporter.yml is $(stat -c '%U:%G %a' "$etc/smtp_exporter.yml")"
ok "upgraded in place: the edited $default_file, the user and the modes kept"

# --- stop, as systemd does (SIGTERM) ----------------------------------------
kill -TERM "$main_pid"
for ((i = 0; ; i++)); do
	kill -0 "$main_pid" 2>/dev/null || break
	((i < 100)) || fail "the exporter did not stop within 10s of SIGTERM"
	sleep 0.1
done
wait "$main_pid" || true
main_pid=""
ok "stopped on SIGTERM"

# --- remove: the configuration and the user stay ------------------------------
dpkg --remove "$pkg"
[[ ! -e /usr/bin/smtp_exporter && ! -e $unit_file ]] || fail "dpkg --remove left the binary or the unit"
[[ -e $etc/smtp_exporter.yml && -e $default_file ]] || fail "dpkg --remove took the configuration"
getent passwd smtp_exporter >/dev/null || fail "dpkg --remove took the user"
ok "removed: binary and unit gone, configuration and user kept"

# --- purge: everything of the package goes, the administrator's files stay ----
dpkg --purge "$pkg"
installed=false
dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q ' installed$' && fail "still installed after purge"
for f in "$etc/smtp_exporter.yml" "$default_file" /etc/systemd/system/multi-user.target.wants/smtp_exporter.service \
	/var/lib/systemd/deb-systemd-helper-enabled/smtp_exporter.service.dsh-also; do
	[[ ! -e $f ]] || fail "dpkg --purge left $f"
done
! getent passwd smtp_exporter >/dev/null || fail "dpkg --purge left the user smtp_exporter"
! getent group smtp_exporter >/dev/null || fail "dpkg --purge left the group smtp_exporter"
[[ -e $etc/test.yml ]] || fail "dpkg --purge took a file the administrator put in $etc"
ok "purged: package files, conffiles, user and group gone; the administrator's files in $etc kept"
rm -f "$etc/test.yml" "$etc/test.pass" "$etc/test-ca.pem"
rmdir "$etc"
